"""Stress `mamba-dna embed --resume`: SIGKILL it at random moments until it finishes, compare with a clean run.

The test suite kills a run once, at a chosen point; this loop kills it many times at arbitrary points
(inside HDF5 calls, between a batch's rows and its progress record, while the file is assembled), which is
how the journal design (mamba_dna/embedding/journal.py) was checked. Each trial must end with a file
equal, dataset by dataset, to an uninterrupted run's.

    .venv/bin/python scripts/embed_kill_loop.py --mode per-base --trials 12
    .venv/bin/python scripts/embed_kill_loop.py --mode pooled --trials 10 --kill-after 0.8,2.2
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch

from mamba_dna.checkpoint import save_model
from mamba_dna.config import MambaConfig
from mamba_dna.model import MambaLMHeadModel

RECORDS = {"r0": 15_000, "r1": 25_000, "r2": 10_000, "r3": 12_500}
MODES = {
    "per-base": ["--pool", "none", "--rc-average", "--window", "100", "--batch-size", "2"],
    "pooled": ["--window", "64", "--batch-size", "4", "--dtype", "float32"],
}


def first_difference(a: Path, b: Path) -> str | None:
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        names: list[str] = []
        fa.visit(lambda n: names.append(n) if isinstance(fa[n], h5py.Dataset) else None)
        for n in names:
            if n not in fb or not np.array_equal(fa[n][()], fb[n][()]):
                return n
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=sorted(MODES), default="per-base")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--kill-after", default="1.5,4.0", help="seconds: uniform range of each run's lifetime")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    lo, hi = map(float, args.kill_after.split(","))
    rng = random.Random(args.seed)

    work = Path(tempfile.mkdtemp(prefix="embed_kill_"))
    torch.manual_seed(0)
    save_model(MambaLMHeadModel(MambaConfig(d_model=32, n_layer=2, d_state=4)), work / "model")
    fasta = work / "g.fa"
    bases = np.random.default_rng(0)
    with open(fasta, "w") as fh:
        for name, n in RECORDS.items():
            fh.write(f">{name}\n" + "".join(bases.choice(list("ACGT"), n)) + "\n")
    # One thread: the same reduction order in every process, so files compare bit for bit.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mamba_dna.cli.main", "embed", str(work / "model"), str(fasta)]
    cmd += [*MODES[args.mode], "--quiet"]
    reference = work / "reference.h5"
    subprocess.run([*cmd, "-o", str(reference)], check=True, env=env)

    failures = 0
    for trial in range(args.trials):
        out = work / "out.h5"
        out.unlink(missing_ok=True)
        shutil.rmtree(work / "out.h5.partial", ignore_errors=True)
        kills, resume = 0, []
        while True:
            proc = subprocess.Popen([*cmd, "-o", str(out), *resume], env=env, stderr=subprocess.PIPE)
            resume = ["--resume"]
            try:
                proc.wait(timeout=rng.uniform(lo, hi))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
            if proc.returncode != 0:
                verdict = f"exit {proc.returncode}: {proc.stderr.read().decode()[-300:]}"
            else:
                diff = first_difference(out, reference)
                verdict = "same as the uninterrupted run" if diff is None else f"DIFFERS in {diff}"
            break
        failures += not verdict.startswith("same")
        print(f"trial {trial}: {kills} kills, {verdict}", flush=True)
    print(f"{failures} of {args.trials} trials failed")
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
