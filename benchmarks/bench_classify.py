"""Great-ape species classification on simulated genomes: Mamba from scratch, pretrained + fine-tuned, k-mer baseline.

The Mamba paper's DNA downstream task (its Fig. 6 / appendix table): which of five great apes does a contiguous
segment of L = 2^10 .. 2^20 bases come from (chance 20 %). Real ape genomes are not shipped, so this runs on
``mamba_dna.simulate.simulate_apes`` genomes (five species evolved from one ancestor with published
divergences; **simulated, not real DNA**). Steps, in one time budget (default 480 s, sized for one H100):

1. simulate the genomes (``--genome-mb``, default 32 Mb ancestral length, one chromosome);
2. one train / valid / test split for every length: interleaved blocks made for the longest L (gaps of
   2^20 bases between splits), so all lengths are tested on the same held-out sequence;
3. pretrain a language model (``--preset``, default ``1.4M``, the paper's small size) on the *training*
   regions of the simulated human genome alone (the paper pretrains on the human reference), next-base
   prediction with a length curriculum 2^10 .. 2^14 (``mamba_dna.pretrain.PretrainTask`` in the generic loop);
4. at each L: fine-tune from scratch and from the pretrained model (same steps, batch, data and seed),
   then test both on the held-out test segments, beside the k-mer logistic-regression baseline fitted on
   the same training segments (``mamba_dna.classify.evaluate_test``);
5. classification throughput (bases/s, strand-averaged as ``classify`` does) at 2^20.

Steps per length: the budget left after simulation and pretraining is shared equally by the 2 x len(L)
fine-tuning runs; each gets ``run_s x`` (measured training bases/s) bases, i.e. the same number of bases at
every length (so fewer segments at longer L; the paper instead trains 10 x 1024 steps of 64 segments at
every L). The plan (steps x batch per L) is printed first and saved in the JSON.

    python benchmarks/bench_classify.py                  # GPU, ~8 min on one H100; JSON to $OUT
    python benchmarks/bench_classify.py --quick --threads 1   # CPU smoke run: tiny model, 2 Mb genomes, L=2^10, 2^12

With ``$OUT`` set (or ``--out``), the results are written to ``<out>/bench_classify.json`` and the working
files (genomes, runs) to ``<out>/bench_classify_work`` (``--keep`` keeps them; default removes them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mamba_dna
from mamba_dna.classifier import SequenceClassifier, load_classifier
from mamba_dna.classify import evaluate_test, finetune, predict_proba
from mamba_dna.classify_data import build_split, open_classes
from mamba_dna.config import MambaConfig, preset
from mamba_dna.manifest import read_manifest
from mamba_dna.simulate import simulate_apes

# Mamba paper (Gu & Dao 2023, arXiv:2312.00752), great-ape classification accuracy (%) after fine-tuning at
# each length, pretrained models of the same context length. RECALLED, NOT VERIFIED against the paper: the
# search tool found no copy of the table. Check arXiv:2312.00752 (appendix, "Species (Great Apes)
# Classification" table) before quoting these numbers anywhere.
PAPER_UNVERIFIED = {
    "HyenaDNA 1.4M": {10: 28.04, 12: 28.43, 14: 41.17, 16: 42.22, 18: 31.10, 20: 54.87},
    "Mamba 1.4M": {10: 31.47, 12: 27.50, 14: 27.66, 16: 40.72, 18: 42.41, 20: 71.67},
    "Mamba 7M": {10: 30.00, 12: 29.01, 14: 31.48, 16: 43.73, 18: 56.60, 20: 81.31},
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def batch_for(length: int, classes: int, quick: bool) -> int:
    """Segments per step: ~2^18 bases (at most 64 segments), a multiple of the class count."""
    target = max(classes, min(64, (2**16 if quick else 2**18) // length))
    return max(classes, target // classes * classes)


def measure_train_rate(config: MambaConfig, length: int, device: torch.device, reps: int = 3) -> float:
    """Fine-tuning bases/s (forward + backward, bf16 on GPU) at one segment per micro-batch."""
    from mamba_dna.training.precision import autocast, autocast_dtype

    amp = autocast_dtype("auto", device)
    model = SequenceClassifier(config, 5).to(device).train()
    model.set_gradient_checkpointing(length >= 2**17)
    x = torch.randint(5, 9, (1, length), device=device)
    y = torch.zeros(1, dtype=torch.long, device=device)
    times = []
    for i in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with autocast(device, amp):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first repetition compiles kernels
            times.append(time.perf_counter() - t)
    return length / float(np.median(times))


def classification_throughput(run_dir: Path, length: int, batch: int, device: torch.device) -> dict[str, Any]:
    """Strand-averaged classification bases/s (as ``mamba-dna classify``: both strands, bf16 on GPU)."""
    from mamba_dna.training.precision import autocast_dtype

    model, _ = load_classifier(run_dir, device)
    amp = autocast_dtype("auto", device)
    chunk = 2**16 if device.type == "cpu" else None
    rng = np.random.default_rng(0)
    windows = [rng.integers(5, 9, length).astype(np.uint8) for _ in range(batch)]
    predict_proba(model, windows[:1], batch_size=1, device=device, amp=amp, chunk=chunk)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    predict_proba(model, windows, batch_size=batch, device=device, amp=amp, chunk=chunk)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    return {"length": length, "batch": batch, "seconds": seconds, "bases_per_s": length * batch / seconds}


def pretrain_human(
    genome: Path,
    split: Any,
    out: Path,
    config: MambaConfig,
    steps: int,
    max_len: int,
    tokens_per_step: int,
    device: str,
    seed: int,
) -> dict[str, Any]:
    """Next-base pretraining on the human genome's training regions of ``split`` (no held-out base seen)."""
    from mamba_dna.datasets.fasta import open_fasta
    from mamba_dna.datasets.regions import Region

    from mamba_dna.model import MambaLMHeadModel
    from mamba_dna.pretrain import PretrainData, PretrainTask
    from mamba_dna.training import distributed as D
    from mamba_dna.training.curriculum import plan_curriculum
    from mamba_dna.training.loop import train
    from mamba_dna.training.task import TrainConfig

    fa = open_fasta(genome)
    regions = {
        s: [Region(iv.record, iv.start, iv.end) for iv in split.intervals("human", s)]
        for s in ("train", "valid")
    }
    data = PretrainData([fa], regions["train"], [fa], regions["valid"], "bed")
    tokens_per_step = max(tokens_per_step, max_len)
    plan = plan_curriculum(2**10, max_len, steps, tokens_per_step, max_batch_tokens=2**16)
    task = PretrainTask(data, plan, dist=D.setup(device), seed=seed, valid_tokens=2**16)
    cfg = TrainConfig.for_steps(steps, lr=4e-3, seed=seed, eval_every=steps, save_every=steps, device=device)
    torch.manual_seed(seed)
    return train(MambaLMHeadModel(config), task, cfg, out, quiet=True, spec={"task": "bench-pretrain"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="CPU smoke run: tiny model, small genomes, 2 lengths"
    )
    ap.add_argument("--device", default=None, help="auto | cpu | cuda (default: cuda, or cpu with --quick)")
    ap.add_argument("--preset", default="1.4M", help="model size (paper: 1.4M and 7M)")
    ap.add_argument("--lengths", default=None, help="log2 lengths, e.g. 10,12,14,16,18,20")
    ap.add_argument(
        "--genome-mb", type=float, default=None, help="ancestral genome length in Mb (default 32)"
    )
    ap.add_argument("--budget-s", type=float, default=None, help="total time budget (default 480, quick 240)")
    ap.add_argument(
        "--pretrain-fraction", type=float, default=0.15, help="share of the budget for pretraining"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.environ.get("OUT"), help="results directory (default $OUT)")
    ap.add_argument("--keep", action="store_true", help="keep the simulated genomes and runs")
    args = ap.parse_args()

    t_start = time.perf_counter()
    quick = args.quick
    device = torch.device(args.device or ("cpu" if quick else "cuda"))
    if args.threads:
        # On a shared, oversubscribed CPU, OpenMP threads that spin-wait for each other made every op
        # 10-30x slower than one thread (measured on 2 busy cores): --threads 1 there.
        torch.set_num_threads(args.threads)
    budget = args.budget_s or (240.0 if quick else 480.0)
    exps = [int(x) for x in (args.lengths or ("10,12" if quick else "10,12,14,16,18,20")).split(",")]
    lengths = [2**e for e in exps]
    genome_len = int((args.genome_mb or (2 if quick else 32)) * 1_000_000)
    config = MambaConfig(d_model=32, n_layer=2, d_state=8) if quick else preset(args.preset)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_classify_"))
    work = out / "bench_classify_work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    dev = str(device)

    # 1. genomes
    t = time.perf_counter()
    sim = simulate_apes(genome_len, work / "apes", seed=args.seed, chromosomes=1)
    t_sim = time.perf_counter() - t
    log(f"simulated {len(sim.fasta)} genomes of ~{genome_len / 1e6:.0f} Mb in {t_sim:.0f} s")

    # 2. one split for every length, made for the longest
    manifest = read_manifest(sim.manifest)
    genomes = open_classes(manifest, max(lengths))
    split = build_split(manifest, genomes, max(lengths), seed=args.seed)
    split.save(work / "split.json")
    k = len(genomes)

    # 3. pretraining, sized from a throughput probe
    probe_len = 2**12 if quick else 2**16
    rate = measure_train_rate(config, probe_len, device)
    log(f"training throughput probe: {rate:,.0f} bases/s at L={probe_len:,}")
    pre_max = 2**11 if quick else 2**14
    pre_tokens_per_step = 2**13 if quick else 2**16
    pre_s = budget * args.pretrain_fraction
    pre_steps = max(10, int(pre_s * rate * 0.8 / pre_tokens_per_step))
    t = time.perf_counter()
    pre = pretrain_human(
        sim.fasta["human"],
        split,
        work / "pretrain",
        config,
        pre_steps,
        pre_max,
        pre_tokens_per_step,
        dev,
        args.seed,
    )
    t_pre = time.perf_counter() - t
    log(f"pretrained {pre_steps} steps in {t_pre:.0f} s: validation {pre['valid']}")

    # 4. fine-tune and test at each length
    left = budget - (time.perf_counter() - t_start)
    run_s = max(5.0, left * 0.7 / (2 * len(lengths)))  # the rest: validation, tests, baselines, throughput
    plan = []
    for L in lengths:
        batch = batch_for(L, k, quick)
        steps = max(8, int(run_s * rate * 0.8 / (batch * L)))
        plan.append({"length": L, "batch": batch, "steps": steps, "segments": steps * batch})
    log("plan: " + ", ".join(f"L={p['length']:,}: {p['steps']} x {p['batch']}" for p in plan))
    results = []
    for p in plan:
        L, row = p["length"], dict(p)
        test_segments = max(8, min(64, 2**24 // L)) if not quick else 16
        common = dict(
            length=L, steps=p["steps"], batch_size=p["batch"], lr=2e-3, seed=args.seed, device=dev, quiet=True,
            split=work / "split.json", eval_every=p["steps"], save_every=p["steps"],
            valid_segments=max(4, min(32, 2**22 // L)), gradient_checkpointing=L >= 2**17,
            max_batch_tokens=2**13 if quick else 2**17,
        )  # fmt: skip
        for name, kw in (
            ("scratch", {"model_config": config}),
            ("pretrained", {"from_run": work / "pretrain"}),
        ):
            t = time.perf_counter()
            res = finetune(manifest, work / f"{name}_{L}", **kw, **common)
            t_ft = time.perf_counter() - t
            t = time.perf_counter()
            report = evaluate_test(
                work / f"{name}_{L}", segments=test_segments, device=dev, baseline=name == "scratch", quiet=True,
                plot=work / f"{name}_{L}.png",
            )  # fmt: skip
            r = report["results"][0]
            row[name] = {
                "test_accuracy": r["model"]["accuracy"],
                "test_macro_f1": r["model"]["macro_f1"],
                "valid_accuracy": res["valid"]["accuracy"],
                "finetune_s": t_ft,
                "test_s": time.perf_counter() - t,
                "confusion": r["model"]["confusion"],
            }
            if r.get("baseline"):
                row["kmer"] = {
                    "test_accuracy": r["baseline"]["accuracy"],
                    "test_macro_f1": r["baseline"]["macro_f1"],
                    "train_windows": report["baseline"]["train_windows"],
                }
            row["test_segments"] = r["n"]
        results.append(row)
        log(
            f"L={L:>9,}: scratch {row['scratch']['test_accuracy']:.1%}  pretrained {row['pretrained']['test_accuracy']:.1%}"
            f"  k-mer {row['kmer']['test_accuracy']:.1%}  ({time.perf_counter() - t_start:.0f} s elapsed)"
        )

    # 5. throughput at the longest length
    L = max(lengths)
    tput = classification_throughput(work / f"pretrained_{L}", L, 4 if device.type == "cuda" else 1, device)

    total = time.perf_counter() - t_start
    summary = {
        "benchmark": "bench_classify",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "mamba_dna": mamba_dna.__version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "data": "SIMULATED great-ape genomes (mamba_dna.simulate.simulate_apes), not real DNA",
        "genome_length": genome_len,
        "classes": [g.label for g in genomes],
        "chance": 1 / k,
        "model": {"preset": None if quick else args.preset, "config": config.to_dict()},
        "pretrain": {
            "steps": pre_steps,
            "max_len": pre_max,
            "seconds": t_pre,
            "valid": pre["valid"],
            "data": "training regions of the simulated human genome",
        },
        "train_rate_bases_per_s": rate,
        "results": results,
        "throughput": tput,
        "seconds": {"total": total, "simulate": t_sim, "pretrain": t_pre, "budget": budget},
        "paper_unverified": {m: {str(2**e): v for e, v in d.items()} for m, d in PAPER_UNVERIFIED.items()},
    }
    print_table(summary, exps)
    path = out / "bench_classify.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    log(f"wrote {path} ({total:.0f} s in all)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def print_table(summary: dict[str, Any], exps: list[int]) -> None:
    paper = summary["paper_unverified"]
    head = ["L", "steps x batch", "scratch", "pretrained", "k-mer", *(f"paper {m}*" for m in paper)]
    rows = []
    for r, e in zip(summary["results"], exps, strict=True):
        rows.append(
            [
                f"2^{e}",
                f"{r['steps']} x {r['batch']}",
                f"{r['scratch']['test_accuracy']:.1%}",
                f"{r['pretrained']['test_accuracy']:.1%}",
                f"{r['kmer']['test_accuracy']:.1%}",
                *(f"{paper[m].get(str(2**e), float('nan')):.1f}%" for m in paper),
            ]
        )
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    print(" | ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    t = summary["throughput"]
    print(f"test accuracy on held-out simulated segments (chance {summary['chance']:.0%}); "
          f"* paper numbers recalled, UNVERIFIED (see PAPER_UNVERIFIED)")  # fmt: skip
    print(
        f"classification throughput at L={t['length']:,} (both strands, batch {t['batch']}): {t['bases_per_s']:,.0f} bases/s"
    )


if __name__ == "__main__":
    main()
