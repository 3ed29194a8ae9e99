"""alignbench: a comparative alignment benchmark suite."""

__version__ = "0.1.0"
