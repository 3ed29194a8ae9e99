"""Optional experiment tracking (``--report-to tensorboard|wandb``, the transformers convention)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import AlignbenchError


class TensorBoardTracker:
    def __init__(self, run_dir: Path, run_name: str, config: dict[str, Any]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise AlignbenchError("report_to: tensorboard is not installed (pip install tensorboard)") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", f"```\n{config}\n```")

    def log(self, row: dict[str, Any]) -> None:
        step = int(row.get("step", 0))
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, run_dir: Path, run_name: str, config: dict[str, Any]):
        try:
            import wandb
        except ImportError:
            raise AlignbenchError("report_to: wandb is not installed (pip install wandb)") from None
        self.run = wandb.init(project="alignbench", name=run_name, config=config, dir=str(run_dir), reinit=True)

    def log(self, row: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in row.items() if k != "step"}, step=int(row.get("step", 0)))

    def close(self) -> None:
        self.run.finish()


def make_tracker(name: str, run_dir: Path, run_name: str, config: dict[str, Any]):
    trackers = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}
    if name not in trackers:
        raise AlignbenchError(f"report_to: unknown tracker '{name}' (tensorboard, wandb)")
    return trackers[name](run_dir, run_name, config)
