"""Training throughput and peak memory: bases/s of a full optimiser step (forward, backward, clip, AdamW)
for each preset and window length, Triton kernels beside the PyTorch reference, on real DNA windows.

Each step holds ``--tokens-per-step`` bases (2^20 by default: batch 1 at 2^20, 256 windows at 2^12), split
into micro-batches of at most ``--max-batch-tokens`` bases with gradient accumulation, exactly as the
training loop does (bf16 autocast on CUDA, fused AdamW, gradient clipping). Activation checkpointing is
switched on only where a step would not fit otherwise (``--checkpointing auto``), and the table says where.
The PyTorch reference path (about 100x slower on a GPU) is timed on ``--reference-tokens-per-step`` bases
(2^16) up to 2^``--reference-max-log2`` (2^14), one step after one warm-up.

Single GPU (writes bench_train.json into $OUT, or --out):

    python benchmarks/bench_train.py --fasta /path/chr20.fa.gz

Two GPUs (each rank trains its own windows, gradients all-reduced as in `mamba-dna pretrain`):

    torchrun --nproc_per_node 2 benchmarks/bench_train.py --fasta /path/chr20.fa.gz --presets 3.5M \
        --lengths 14,17,20 --backends triton

CPU smoke test (seconds): python benchmarks/bench_train.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mamba_dna.config import preset
from mamba_dna.model import MambaLMHeadModel
from mamba_dna.optim import make_optimizer
from mamba_dna.training import distributed as D
from mamba_dna.training.lm import lm_loss
from mamba_dna.training.precision import autocast, autocast_dtype


@contextlib.contextmanager
def kernels(backend: str):
    """Force the kernel backend (read by mamba_dna.kernels.dispatch at every call)."""
    old = os.environ.get("MAMBA_DNA_KERNELS")
    os.environ["MAMBA_DNA_KERNELS"] = backend
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MAMBA_DNA_KERNELS", None)
        else:
            os.environ["MAMBA_DNA_KERNELS"] = old


def windows(fasta: str, length: int, count: int, rank: int, seed: int = 0) -> torch.Tensor:
    """``count`` real DNA windows of ``length`` (the sampler the training loop uses, no reverse complement)."""
    from mamba_dna.datasets.sampler import WindowSampler

    sampler = WindowSampler([fasta], length, rc_prob=0.0, seed=seed)
    return sampler.batch(0, count, rank)


def measure(
    name: str,
    length: int,
    *,
    fasta: str,
    tokens_per_step: int,
    max_batch_tokens: int,
    backend: str,
    checkpointing: bool,
    info: D.DistInfo,
    warmup: int,
    steps: int,
) -> dict[str, Any]:
    """One configuration: median step time, bases/s (all processes) and peak memory (this process)."""
    dev = info.device
    torch.manual_seed(0)
    model = MambaLMHeadModel(preset(name)).to(dev)
    model.set_gradient_checkpointing(checkpointing)
    D.broadcast_module(model, info)
    opt = make_optimizer(model, 1e-3)
    params = [p for p in model.parameters() if p.requires_grad]
    amp = autocast_dtype("auto", dev)
    per_rank = max(1, tokens_per_step // length // info.world_size)
    micro = max(1, min(per_rank, max_batch_tokens // length))
    while per_rank % micro:
        micro -= 1
    data = windows(fasta, length, per_rank, info.rank).to(dev)
    batches = list(data.split(micro))
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    with kernels(backend):
        for i in range(warmup + steps):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            for x in batches:
                with autocast(dev, amp):
                    loss, _ = lm_loss(model, x)
                (loss / len(batches)).backward()
            D.average_gradients(params, info)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    times.sort()
    step_s = times[len(times) // 2]
    bases = per_rank * length * info.world_size
    return {
        "preset": name,
        "length": length,
        "log2_length": length.bit_length() - 1,
        "backend": backend,
        "checkpointing": checkpointing,
        "world_size": info.world_size,
        "batch_per_rank": per_rank,
        "micro_batch": micro,
        "accumulation": len(batches),
        "step_ms": step_s * 1e3,
        "bases_per_s": bases / step_s,
        "peak_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
        "parameters": model.num_parameters(),
        "final_loss": float(loss.detach()),
    }


def run_one(
    args: argparse.Namespace, name: str, length: int, backend: str, info: D.DistInfo
) -> dict[str, Any]:
    """Measure without activation checkpointing first (auto), with it after an out-of-memory error."""
    modes = {"auto": [False, True], "on": [True], "off": [False]}[args.checkpointing]
    if backend == "triton":
        tokens, max_batch, warmup, steps = (
            args.tokens_per_step,
            args.max_batch_tokens,
            args.warmup,
            args.steps,
        )
    else:
        # The reference path is ~100x slower, and its scan keeps per-chunk states for autograd: smaller
        # steps and micro-batches, one timed step after one warm-up.
        tokens, max_batch = args.reference_tokens_per_step, args.reference_max_batch_tokens
        warmup, steps = min(args.warmup, 1), min(args.steps, 1)
    last_error = ""
    for ckpt in modes:
        try:
            return measure(
                name, length, fasta=args.fasta, tokens_per_step=tokens, max_batch_tokens=max_batch,
                backend=backend, checkpointing=ckpt, info=info, warmup=warmup, steps=steps,
            )  # fmt: skip
        except torch.OutOfMemoryError as e:
            last_error = f"out of memory ({str(e).splitlines()[0][:80]})"
            torch.cuda.empty_cache()
    return {"preset": name, "length": length, "log2_length": length.bit_length() - 1, "backend": backend,
            "error": last_error, "world_size": info.world_size}  # fmt: skip


def _rate(x: float) -> str:
    return f"{x / 1e6:.3f} M" if x >= 1e5 else f"{x:,.0f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = "| preset | L | backend | ckpt | batch x accum | step ms | bases/s | peak GiB |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['preset']} | 2^{r['log2_length']} | {r['backend']} | - | - | - | {r['error']} | - |"
            )
            continue
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        lines.append(
            f"| {r['preset']} | 2^{r['log2_length']} | {r['backend']} | {'yes' if r['checkpointing'] else 'no'} "
            f"| {r['micro_batch']} x {r['accumulation']} | {r['step_ms']:.1f} | {_rate(r['bases_per_s'])} "
            f"| {peak} |"
        )
    return "\n".join(lines)


def retention(rows: list[dict[str, Any]]) -> list[str]:
    """bases/s at the longest length as a fraction of bases/s at 2^14 (the target is >= 80%)."""
    out = []
    for name in dict.fromkeys(r["preset"] for r in rows):
        for backend in ("triton", "reference"):
            ok = {r["log2_length"]: r["bases_per_s"] for r in rows
                  if r["preset"] == name and r["backend"] == backend and "error" not in r}  # fmt: skip
            if 14 in ok and max(ok) > 14:
                top = max(ok)
                out.append(f"{name} {backend}: 2^{top} runs at {ok[top] / ok[14]:.0%} of the 2^14 bases/s")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="1.4M,3.5M,7M")
    p.add_argument("--lengths", default="12,14,16,18,20", help="log2 window lengths")
    p.add_argument("--fasta", default=None, help="genome to draw windows from (default: bundled E. coli)")
    p.add_argument("--tokens-per-step", type=int, default=2**20)
    p.add_argument("--max-batch-tokens", type=int, default=2**20)
    p.add_argument("--checkpointing", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--reference-max-log2", type=int, default=14, help="longest length for the reference path")
    p.add_argument(
        "--reference-tokens-per-step", type=int, default=2**16, help="bases per step of the reference path"
    )
    p.add_argument(
        "--reference-max-batch-tokens", type=int, default=2**16, help="micro-batch size of the reference path"
    )
    p.add_argument(
        "--backends",
        default="triton,reference",
        help="kernel paths to time (reference only up to the length above)",
    )
    p.add_argument(
        "--scan-tiles",
        default=None,
        help="JSON of the selective scan's TILES to train with (bench_kernels.py --tune writes scan_tiles.json)",
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--out",
        default=None,
        help="JSON file, or a directory to write bench_train.json into (default: $OUT if set)",
    )
    p.add_argument("--quick", action="store_true", help="CPU smoke test: tiny preset, short windows, 1 step")
    args = p.parse_args(argv)
    if args.quick:
        args.presets, args.lengths, args.device = "tiny", "7,8", "cpu"
        args.tokens_per_step, args.max_batch_tokens, args.warmup, args.steps = 512, 512, 0, 1
        args.reference_tokens_per_step = 512
        args.backends, args.checkpointing = "reference", "off"
    if args.fasta is None:
        from mamba_dna.datasets.fasta import bundled_genome

        args.fasta = str(bundled_genome("ecoli_k12_mg1655"))
    tiles = json.loads(Path(args.scan_tiles).read_text()) if args.scan_tiles else None
    if tiles:
        from mamba_dna.kernels import selective_scan_triton

        selective_scan_triton.set_tiles(tiles)
    info = D.setup(args.device)
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    if info.device.type != "cuda":
        wanted = ["reference"]  # the Triton kernels need a GPU (or the interpreter, far too slow to time)
    rows = []
    # Backend outermost: the Triton rows are the headline and come first if a long run is cut short.
    for backend in wanted:
        for name in args.presets.split(","):
            for k in (int(x) for x in args.lengths.split(",")):
                if backend == "reference" and k > args.reference_max_log2:
                    continue
                r = run_one(args, name, 2**k, backend, info)
                rows.append(r)
                if info.is_main:
                    print(json.dumps(r), file=sys.stderr, flush=True)
    if not info.is_main:
        return
    env = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else "cpu",
        "world_size": info.world_size,
        "fasta": args.fasta,
        "tokens_per_step": args.tokens_per_step,
        "reference_tokens_per_step": args.reference_tokens_per_step,
        "max_batch_tokens": args.max_batch_tokens,
        "scan_tiles": tiles,
    }
    print(f"# training throughput ({env['device']}, {info.world_size} process(es), torch {env['torch']})")
    order = args.presets.split(",")
    rows.sort(key=lambda r: (order.index(r["preset"]), r["length"], r["backend"] != "triton"))
    print(table(rows))
    for line in retention(rows):
        print(line)
    out = args.out or os.environ.get("OUT")
    if out and (Path(out).is_dir() or out.endswith(os.sep) or not args.out):
        out = os.path.join(out, "bench_train.json")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
