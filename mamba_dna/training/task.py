"""The contract between the generic training loop and a task (pretraining, fine-tuning, synthetic tasks).

The loop (:func:`mamba_dna.training.train`) owns everything that is the same for every task: the
optimiser rules, mixed precision, gradient accumulation, clipping, checkpoints and exact resume, SIGINT and
NaN handling, DDP, progress and metrics logs. A task owns its data and its loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn


@dataclass
class TrainConfig:
    """Optimisation settings; saved as ``train_config.json`` in the run directory."""

    steps: int = 1000
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 200
    save_every: int = 200
    keep_last: int = 2
    log_every: int = 10
    device: str = "auto"  # "auto" = cuda if available, else cpu
    precision: str = "auto"  # "auto" = bf16 autocast on CUDA, fp32 on CPU; or "bf16", "fp32"
    gradient_checkpointing: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_steps(
        cls,
        steps: int,
        *,
        warmup_steps: int | None = None,
        eval_every: int | None = None,
        save_every: int | None = None,
        **fields: Any,
    ) -> TrainConfig:
        """A config whose schedule follows the run's length where the caller leaves it as None.

        The commands' defaults: warm up for a tenth of the run (at most 100 steps), validate and
        checkpoint every tenth.
        """
        tenth = max(1, steps // 10)
        return cls(
            steps=steps,
            warmup_steps=min(100, steps // 10) if warmup_steps is None else warmup_steps,
            eval_every=tenth if eval_every is None else eval_every,
            save_every=tenth if save_every is None else save_every,
            **fields,
        )


class Task(Protocol):
    """What the loop asks of a task. Every method is deterministic in its arguments (exact resume)."""

    def micro_batches(self, step: int) -> list[Any]:
        """The micro-batches of optimiser step ``step`` for this process (rank/world known to the task).

        More than one means gradient accumulation (e.g. long curriculum stages at batch 1)."""
        ...

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss of one micro-batch (already on the device) and metrics to log (e.g. bases).

        Metric values may be floats or 0-dim tensors (tensors are read once per step, without a GPU sync
        per micro-batch). Two keys mean something to the loop: ``tokens`` (summed over micro-batches and
        processes: the progress bar's bases/s and the run's tokens seen) and ``weight`` (the micro-batch's
        weight in the step's mean loss, e.g. the number of predicted bases; default 1). Other metrics are
        logged as their weighted mean over the step."""
        ...

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Validation metrics; the key ``loss`` (lower is better) selects the best checkpoint."""
        ...

    def describe(self, step: int) -> str:
        """A short label for the progress bar, e.g. ``stage 3/7 L=4096``."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable task state to save with a checkpoint (may be empty)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
