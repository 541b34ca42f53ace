"""torch.distributed plumbing: the same command line runs in one process or under ``torchrun``.

``torchrun --nproc_per_node K ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup` reads them,
joins the process group (gloo on CPU, NCCL on CUDA) and picks this process's device. Without them it is a
no-op that returns rank 0 of 1. Gradients are averaged by an explicit all-reduce after the micro-batches of a
step (see :mod:`mamba_dna.training.loop`), not by a ``DistributedDataParallel`` wrapper, so a task may call
any method of the model (``hidden_states``, a classifier head) and still have its gradients synchronised.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from mamba_dna.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` processes, computing on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and plots; every rank computes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA if visible, else CPU), ``cpu``, ``cuda`` (this process's GPU) or ``cuda:N``."""
    s = (spec or "auto").strip().lower()
    if s == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if s == "cpu":
        return torch.device("cpu")
    if s == "cuda" or s.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: no CUDA GPU is visible to torch; use --device cpu")
        if s == "cuda":
            return torch.device(f"cuda:{local_rank}")
        index = s.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise UserError(
                f"--device {spec}: there are {torch.cuda.device_count()} GPUs (cuda:0 .. "
                f"cuda:{torch.cuda.device_count() - 1})"
            )
        return torch.device(s)
    raise UserError(f"--device must be auto, cpu, cuda or cuda:N, not {spec!r}")


def setup(device: str = "auto") -> DistInfo:
    """Join the process group when launched by ``torchrun`` (idempotent) and return this process's place."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=resolve_device(device))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        # NVLink SHARP multicast (NVLS) is off on the machines we run on; never switch it on implicitly.
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        # Leave the group before the interpreter tears down: a gloo group still alive at exit can abort
        # the process ("terminate called without an active exception") after a run that succeeded.
        atexit.register(_leave_group)
    if dist.get_world_size() != world:
        raise UserError(f"WORLD_SIZE={world} but the process group has {dist.get_world_size()} processes")
    return DistInfo(rank=dist.get_rank(), world_size=world, local_rank=local_rank, device=dev)


def _leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over all ranks in place (a no-op in one process)."""
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def average_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Sum every parameter's gradient over ranks with one flat all-reduce (the caller rescales).

    A parameter without a gradient on this rank contributes zeros, so every rank runs the same collective.
    """
    if not info.distributed:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(g).to(g.dtype)
        offset += n


def gather_tensors(t: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """``t`` from every rank (same shape and dtype everywhere), as CPU tensors, in rank order."""
    if not info.distributed:
        return [t.cpu()]
    x = t.to(info.device)
    out = [torch.empty_like(x) for _ in range(info.world_size)]
    dist.all_gather(out, x)
    return [o.cpu() for o in out]


def broadcast_from_main(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Rank 0's ``t`` on every rank (in place)."""
    if info.distributed:
        dist.broadcast(t, src=0)
    return t


def broadcast_module(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers to every rank, so that all replicas start identical whatever
    each process's initialisation did (there is no DistributedDataParallel wrapper to do it)."""
    if info.distributed:
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()
