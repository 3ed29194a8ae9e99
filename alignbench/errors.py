"""User-facing errors: one line, names the field, non-zero exit from the CLI."""


class AlignbenchError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""


class ConfigError(AlignbenchError):
    """A config field is missing, unknown, of the wrong type or out of range."""

    def __init__(self, field: str, problem: str):
        self.field = field
        super().__init__(f"{field}: {problem}")


class DataError(AlignbenchError):
    """A data row or file is malformed."""


class TrainingFailure(Exception):
    """A run could not finish (non-finite loss or gradient, ...); the sweep records it and goes on."""

    def __init__(self, reason: str, step: int):
        self.reason = reason
        self.step = step
        super().__init__(f"step {step}: {reason}")
