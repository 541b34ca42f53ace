"""The model side of a run: its settings, tokens in, hidden states out, and host copies one batch behind."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mamba_dna.embedding.inputs import Job
from mamba_dna.errors import UserError
from mamba_dna.tokenizer import PAD, reverse_complement


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available")
    return dev


@dataclass
class Runner:
    """Everything one embedding run needs, resolved and validated."""

    model: Any
    device: torch.device
    fastas: list[Any]
    jobs: list[Job]
    window: int
    stride: int
    pool: str
    rc_average: bool
    dtype: np.dtype
    batch_size: int
    precision: str
    compression: str
    quiet: bool
    progress: Any = None
    task: Any = None
    bases_done: int = 0  # in this process (not counting what a resumed file already held)
    started: float = 0.0

    @property
    def d_model(self) -> int:
        return int(self.model.config.d_model)

    @property
    def passes(self) -> int:
        """Strands computed per base: 2 with ``rc_average``."""
        return 2 if self.rc_average else 1

    def note(self, text: str) -> None:
        if not self.quiet:
            print(f"note: {text}", file=sys.stderr)

    def tokens(self, job: Job, start: int, end: int, reverse: bool = False) -> np.ndarray:
        """Tokens of ``job``'s bases [start, end) (job coordinates); reverse-complemented if asked."""
        toks = np.asarray(
            self.fastas[job.fasta].tokens(job.record, job.start + start, job.start + end), dtype=np.uint8
        )
        return np.ascontiguousarray(reverse_complement(toks)) if reverse else toks

    def batch_ids(self, pieces: list[np.ndarray]) -> torch.Tensor:
        # Right padding is harmless: the model is causal, so padding after a piece never reaches it.
        width = max(len(p) for p in pieces)
        ids = np.full((len(pieces), width), PAD, dtype=np.int64)
        for i, p in enumerate(pieces):
            ids[i, : len(p)] = p
        return torch.from_numpy(ids).to(self.device, non_blocking=True)

    def hidden(self, ids: torch.Tensor, state: Any = None) -> torch.Tensor:
        with torch.inference_mode():
            if self.precision == "bf16":
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    return self.model.hidden_states(ids, state)
            return self.model.hidden_states(ids, state)

    def advance(self, bases: int) -> None:
        self.bases_done += bases
        if self.progress is not None:
            rate = self.bases_done / max(time.perf_counter() - self.started, 1e-9)
            self.progress.update(self.task, advance=bases, info=f"{rate:,.0f} bases/s")

    def advance_rows(self, rows: int) -> None:
        """Progress of the final assembly, in rows of the HDF5 file."""
        if self.progress is not None:
            self.progress.update(self.task, advance=rows)


class Pipeline:
    """Runs the host-side work of batch k after batch k+1 has been queued on the device.

    CUDA kernels run asynchronously, so while the GPU computes the next batch the CPU copies the previous
    one into HDF5 (compression is the slow part of writing). On the CPU this simply runs in order.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pending: tuple[Callable[..., None], list[torch.Tensor], Any] | None = None

    def submit(self, fn: Callable[..., None], tensors: list[torch.Tensor]) -> None:
        """Call ``fn`` with ``tensors`` as numpy arrays once they have reached the host."""
        host = [t.to("cpu", non_blocking=True) for t in tensors]
        event = None
        if self.cuda:
            event = torch.cuda.Event()
            event.record()
        previous, self.pending = self.pending, (fn, host, event)
        if previous is not None:
            self._run(previous)

    def drain(self) -> None:
        if self.pending is not None:
            previous, self.pending = self.pending, None
            self._run(previous)

    @staticmethod
    def _run(item: tuple[Callable[..., None], list[torch.Tensor], Any]) -> None:
        fn, host, event = item
        if event is not None:
            event.synchronize()
        fn(*[t.numpy() if t.dtype != torch.bfloat16 else t.float().numpy() for t in host])
