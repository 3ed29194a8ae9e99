"""Data parallelism through ``accelerate``: one code path for one CPU, one GPU or ``accelerate launch``.

A sweep started with ``accelerate launch --num_processes N -m alignbench sweep ...`` runs every run on
all N processes together: each process takes its share of every batch, gradients are averaged by
DDP, and only the main process writes files. In a single process everything here is the identity.

Mixed precision is applied with ``torch.autocast`` by the trainer rather than by the Accelerator:
accelerate's state is process-global and cannot change precision between the runs of one sweep.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class Distributed:
    """What the trainer needs from accelerate: device, DDP wrapping, batch sharding, gathering."""

    accelerator: Any

    @classmethod
    def for_device(cls, device: torch.device) -> "Distributed":
        from accelerate import Accelerator

        # in a single process this only records the device; under `accelerate launch` it joins the group
        return cls(Accelerator(cpu=device.type == "cpu", mixed_precision="no"))

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        """Wrap for data parallelism (DDP) when there are several processes; unchanged otherwise."""
        if self.num_processes == 1:
            return model, optimizer
        return self.accelerator.prepare(model, optimizer)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return self.accelerator.unwrap_model(model) if self.num_processes > 1 else model

    def shard(self, idx: Tensor) -> Tensor:
        """This process's share of a batch of row indices (every process drew the same batch)."""
        return idx[self.accelerator.process_index::self.num_processes] if self.num_processes > 1 else idx

    def gather(self, t: Tensor) -> Tensor:
        """Concatenate a per-process tensor over processes (no gradient), e.g. for batch statistics."""
        return self.accelerator.gather(t.detach().contiguous()) if self.num_processes > 1 else t

    def backward(self, loss: Tensor) -> None:
        if self.num_processes > 1:
            self.accelerator.backward(loss)
        else:
            loss.backward()

    def wait(self) -> None:
        if self.num_processes > 1:
            self.accelerator.wait_for_everyone()
