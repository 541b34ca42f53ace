"""Where a training step's GPU time goes, by kernel family, at several window lengths side by side.

The question it answers: at the same bases per step, why is a step at 2^20 (batch 1) slower than at 2^14
(batch 64)? One warm-up step, then one step under ``torch.profiler``; every CUDA kernel's time is put in
a family (scan forward / backward, conv, norm, GEMM, elementwise, ...) and the families are printed as
one table with a column per length, then the top kernels of each length.

    python benchmarks/profile_train.py --preset 3.5M --lengths 14,20            # on a CUDA machine
    python benchmarks/profile_train.py --preset 3.5M --lengths 14,20 --checkpointing off
    python benchmarks/profile_train.py --preset tiny --lengths 8,10 --tokens 4096 --device cpu   # smoke

Writes profile_train.json into $OUT (or --out) with every kernel's name, count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import windows  # the same real-DNA windows as the throughput benchmark

from mamba_dna.config import preset
from mamba_dna.model import MambaLMHeadModel
from mamba_dna.optim import make_optimizer
from mamba_dna.training.lm import lm_loss
from mamba_dna.training.precision import autocast

# First match wins; patterns are tried against the kernel name.
FAMILIES = [
    ("scan fwd", r"_scan_fwd_(fix_)?kernel"),  # the fix kernel is pass 2 of a segmented forward
    ("scan bwd", r"_scan_bwd_kernel"),
    ("conv", r"_conv_(fwd|bwd)"),
    ("rmsnorm", r"_rms_"),
    ("gemm", r"gemm|cutlass|sm90_|sm80_|ampere|cublas|nvjet|splitK|Kernel2"),
    ("optimizer", r"[Aa]dam|multi_tensor|foreach"),
    ("cross entropy", r"nll_loss|log_softmax|softmax"),
    ("embedding", r"embedding|indexSelect|index_select|scatter|sort|radix|segment"),
    ("reduction", r"reduce_kernel|Reduce"),
    # Non-vectorised elementwise kernels (gpu_kernel_impl_nocast) are the ones with strided operands.
    ("copy / strided", r"copy|CatArray|Contiguous|transpose|gpu_kernel_impl_nocast"),
    ("elementwise", r"elementwise|vectorized|unrolled|pointwise"),
    ("memset", r"[Mm]emset|fill"),
]


def family(name: str) -> str:
    for fam, pat in FAMILIES:
        if re.search(pat, name):
            return fam
    return "other"


def _self_time_us(evt: Any, cuda: bool) -> float:
    # torch renamed the CUDA-specific fields to "device" ones; accept either.
    names = ("self_device_time_total", "self_cuda_time_total") if cuda else ("self_cpu_time_total",)
    for attr in names:
        if hasattr(evt, attr):
            return float(getattr(evt, attr))
    return 0.0


def one_length(args: argparse.Namespace, length: int) -> dict[str, Any]:
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    model = MambaLMHeadModel(preset(args.preset)).to(dev)
    model.set_gradient_checkpointing(args.checkpointing == "on")
    opt = make_optimizer(model, 1e-3)
    batch = max(1, args.tokens // length)
    if args.fasta == "random":  # uniform random bases: no FASTA reader (pyfaidx) needed
        data = torch.randint(5, 9, (batch, length), generator=torch.Generator().manual_seed(0)).to(dev)
    else:
        data = windows(args.fasta, length, batch, 0).to(dev)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(dev, torch.bfloat16 if cuda else None):
            loss, _ = lm_loss(model, data)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    step()
    sync()
    wall_ms = (time.perf_counter() - t0) * 1e3
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        step()
        sync()
    kernels: dict[str, dict[str, float]] = {}
    for evt in prof.key_averages():
        us = _self_time_us(evt, cuda)
        if us <= 0:
            continue
        k = kernels.setdefault(evt.key, {"ms": 0.0, "count": 0})
        k["ms"] += us / 1e3
        k["count"] += evt.count
    fams: dict[str, float] = {}
    for name, k in kernels.items():
        fam = family(name)
        fams[fam] = fams.get(fam, 0.0) + k["ms"]
    return {
        "length": length,
        "batch": batch,
        "wall_ms": wall_ms,
        "gpu_ms": sum(fams.values()),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
        "families": fams,
        "kernels": kernels,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="3.5M")
    ap.add_argument("--lengths", default="14,20", help="log2 window lengths")
    ap.add_argument("--tokens", type=int, default=2**20, help="bases per step (batch = tokens / length)")
    ap.add_argument("--checkpointing", choices=("on", "off"), default="on")
    ap.add_argument("--fasta", default=None, help="genome for the windows (default: bundled E. coli)")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run (CPU operator times)")
    ap.add_argument("--top", type=int, default=12, help="kernels listed per length")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args()
    if args.fasta is None:
        from mamba_dna.datasets.fasta import bundled_genome

        args.fasta = str(bundled_genome("ecoli_k12_mg1655"))
    runs = [one_length(args, 2 ** int(k)) for k in args.lengths.split(",")]

    print(f"# {args.preset}, checkpointing {args.checkpointing}, {args.tokens:,} bases per step")
    print("| family | " + " | ".join(f"2^{r['length'].bit_length() - 1} ms" for r in runs) + " |")
    print("|---|" + "---|" * len(runs))
    names = sorted({f for r in runs for f in r["families"]}, key=lambda f: -runs[-1]["families"].get(f, 0))
    for f in names:
        print(f"| {f} | " + " | ".join(f"{r['families'].get(f, 0.0):.1f}" for r in runs) + " |")
    print("| **kernel total** | " + " | ".join(f"{r['gpu_ms']:.1f}" for r in runs) + " |")
    print("| wall (unprofiled step) | " + " | ".join(f"{r['wall_ms']:.1f}" for r in runs) + " |")
    print("| peak GiB | " + " | ".join(f"{r['peak_gib']:.1f}" for r in runs) + " |")
    for r in runs:
        print(f"\n## top kernels at 2^{r['length'].bit_length() - 1} (batch {r['batch']})")
        top = sorted(r["kernels"].items(), key=lambda kv: -kv[1]["ms"])[: args.top]
        for name, k in top:
            print(f"{k['ms']:9.2f} ms {k['count']:6d}x  [{family(name)}] {name[:110]}")
    if args.out:
        path = Path(args.out) / f"profile_train_{args.preset}_{args.checkpointing}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps({"preset": args.preset, "checkpointing": args.checkpointing, "runs": runs})
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
