"""Induction heads as in the Mamba paper (Table 2): train at 256, test at 2^6 .. 2^20, Mamba vs the ablation.

Trains the paper's 2-layer, width-64 Mamba on induction heads at length 256 and the S4-like non-selective
ablation (dt, B, C independent of the input) with the same seed, data and optimiser, then scores the answer
position of a fixed test set at every power of two from 2^6 to 2^20. The paper reports 100% for Mamba at
every length (74K parameters, ~205K steps at batch 8); this benchmark trains far fewer steps with a larger
batch to fit the budget. Prints the table; writes metrics.json, accuracy.png (both curves) and bench.json
(timings, environment) into --out (default $OUT, else ./bench_synthetic).

GPU: about 2.5 minutes of H100 time (measured: 10.2 ms/step for the selective model, 9.8 for the ablation,
7,000 steps each, 3-4 s of evaluation; results in benchmarks/RESULTS.md). 2,000 steps at lr 1e-3 left
both models at chance::

    python benchmarks/bench_synthetic.py --out $OUT/synthetic

CPU, small scale (train at 64, test 2^6 .. 2^14, width 32, state 8; ~20 minutes on 2 busy cores)::

    OMP_NUM_THREADS=1 python benchmarks/bench_synthetic.py --scale cpu --out /tmp/bench_synthetic
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from mamba_dna.atomic import write_json
from mamba_dna.synthetic import run_synthetic, table_rows

SCALES: dict[str, dict[str, Any]] = {
    "gpu": {
        "train_len": 256, "test_lens": [2**k for k in range(6, 21)], "d_model": 64, "d_state": 16,
        "steps": 7000, "batch_size": 32, "lr": 3e-3, "eval_samples": 128, "eval_tokens": 2**24,
        "device": "cuda",
    },
    "cpu": {
        "train_len": 64, "test_lens": [2**k for k in range(6, 15)], "d_model": 32, "d_state": 8,
        "steps": 1000, "batch_size": 32, "lr": 3e-3, "eval_samples": 64, "eval_tokens": 2**18,
        "device": "cpu",
    },
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="gpu")
    ap.add_argument("--task", choices=("induction", "selective-copy"), default="induction")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "bench_synthetic")
    for key in ("train_len", "steps", "batch_size", "eval_samples", "eval_tokens", "d_model", "d_state"):
        ap.add_argument("--" + key.replace("_", "-"), type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    settings = dict(SCALES[args.scale])
    for key in (*settings, "seed"):
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    console = Console()
    console.print(f"[bold]synthetic benchmark[/] ({args.task}, scale {args.scale}): {json.dumps(settings)}")
    start = time.perf_counter()
    metrics = run_synthetic(args.task, args.out, compare=True, **settings)
    wall = time.perf_counter() - start

    header, rows = table_rows(metrics)
    table = Table(title=f"{args.task}: accuracy on the answer tokens, trained at {settings['train_len']}")
    for h in header:
        table.add_column(h, justify="left" if h == "eval path" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    timings = {
        run["name"]: {
            "train_s": run["train"]["elapsed_s"],
            "steps": run["train"]["step"],
            "ms_per_step": 1000 * run["train"]["elapsed_s"] / max(run["train"]["step"], 1),
            "eval_s": sum(r["seconds"] for r in run["results"]),
            "eval_s_per_length": {str(r["length"]): r["seconds"] for r in run["results"]},
            "valid_at_train_len": run["train"]["valid"],
            "parameters": run["parameters"],
        }
        for run in metrics["runs"]
    }
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available() and settings["device"] != "cpu"
        else platform.processor()
    )
    bench = {
        "command": " ".join(["python", *sys.argv]),
        "task": args.task,
        "scale": args.scale,
        "settings": settings,
        "wall_s": wall,
        "device": device or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "timings": timings,
        "accuracy": metrics["accuracy"],
    }
    write_json(Path(args.out) / "bench.json", bench)
    for name, t in timings.items():
        console.print(
            f"{name}: {t['steps']} steps in {t['train_s']:.1f} s ({t['ms_per_step']:.1f} ms/step), "
            f"evaluation {t['eval_s']:.1f} s, {t['parameters']:,} parameters"
        )
    console.print(f"total {wall:.1f} s; wrote {args.out}/metrics.json, accuracy.png, bench.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
