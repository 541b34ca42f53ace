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

Every fine-tuning run gets the same number of training bases (``--train-bases``), so fewer segments at
longer L (the paper instead trains 10 x 1024 steps of 64 segments at every L); pretraining gets
``--pretrain-bases``. The numbers therefore do not depend on the time budget, which only decides how much
of the table one call completes: a (length, model) unit starts only if its estimated time (training and
testing, from a throughput probe) fits in what is left of ``--budget-s``. Finished units, the pretrained
weights and the throughput go to ``<out>``; ``--resume-from`` a previous call's ``<out>`` skips what it
holds (the genomes are simulated again from the seed), so a table that needs more device time than one
call is built over several:

    python benchmarks/bench_classify.py --budget-s 540                         # first call, JSON to $OUT
    python benchmarks/bench_classify.py --budget-s 540 --resume-from PREVIOUS  # later calls: the rest
    python benchmarks/bench_classify.py --quick --threads 1   # CPU smoke run: tiny model, 2 Mb genomes, L=2^10, 2^12

With ``$OUT`` set (or ``--out``), the results are written to ``<out>/bench_classify.json`` (rewritten after
each unit), the pretrained weights to ``<out>/bench_classify_pretrain/``, and the working files (genomes,
runs) to ``<out>/bench_classify_work`` (``--keep`` keeps them; default removes them).
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
from mamba_dna.atomic import write_json
from mamba_dna.classifier import SequenceClassifier
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


def classification_throughput(
    config: MambaConfig, classes: int, length: int, batch: int, device: torch.device
) -> dict[str, Any]:
    """Strand-averaged classification bases/s (as ``mamba-dna classify``: both strands, bf16 on GPU).

    Speed does not depend on the weights, so a fresh classifier of the benchmark's size is timed.
    """
    from mamba_dna.training.precision import autocast_dtype

    torch.manual_seed(0)
    model = SequenceClassifier(config, classes).to(device).eval()
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


VARIANTS = ("scratch", "pretrained")


def unit_key(variant: str, length: int) -> str:
    return f"{variant}/{length}"


def test_segments_for(length: int, quick: bool) -> int:
    """Test segments per class: ~2^24 bases per class, between 8 and 64 segments."""
    return 16 if quick else max(8, min(64, 2**24 // length))


def estimate_s(
    length: int, train_bases: int, classes: int, rate: float, quick: bool, baseline: bool
) -> float:
    """A generous guess of one unit's seconds: training, then both strands of the test segments.

    Inference runs at about 3x the training rate; the k-mer baseline and per-run start-up get a flat 20 s.
    Training is slower at long L (no batching, gradient checkpointing): 1.5x there.
    """
    train = train_bases / rate * (1.5 if length >= 2**17 else 1.0)
    test = classes * test_segments_for(length, quick) * length * 2 / (3 * rate)
    return 1.25 * (train + test) + (20.0 if baseline else 10.0)


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
    ap.add_argument(
        "--train-bases", type=int, default=None, help="bases per fine-tuning run (default 2^26, quick 2^18)"
    )
    ap.add_argument(
        "--pretrain-bases", type=int, default=None, help="pretraining bases (default 2^27, quick 2^19)"
    )
    ap.add_argument(
        "--budget-s", type=float, default=None, help="time budget of this call (default 540, quick 600)"
    )
    ap.add_argument(
        "--resume-from", default=None, help="a previous call's output directory: skip what it holds"
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
    budget = args.budget_s or (600.0 if quick else 540.0)
    exps = [int(x) for x in (args.lengths or ("10,12" if quick else "10,12,14,16,18,20")).split(",")]
    lengths = [2**e for e in exps]
    genome_len = int((args.genome_mb or (2 if quick else 32)) * 1_000_000)
    train_bases = args.train_bases or (2**18 if quick else 2**26)
    pretrain_bases = args.pretrain_bases or (2**19 if quick else 2**27)
    config = MambaConfig(d_model=32, n_layer=2, d_state=8) if quick else preset(args.preset)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_classify_"))
    out.mkdir(parents=True, exist_ok=True)
    work = out / "bench_classify_work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    dev = str(device)
    # What makes two calls' units comparable: a resumed call must agree on all of it.
    setup = {
        "config": config.to_dict(),
        "genome_length": genome_len,
        "seed": args.seed,
        "train_bases": train_bases,
        "pretrain_bases": pretrain_bases,
        "quick": quick,
    }
    state: dict[str, Any] = {"units": {}, "pretrain": None, "throughput": None, "calls": []}
    pretrained_dir = out / "bench_classify_pretrain"
    if args.resume_from:
        prev_dir = Path(args.resume_from)
        state = json.loads((prev_dir / "bench_classify.json").read_text())
        if state["setup"] != setup:
            sys.exit(f"--resume-from {prev_dir}: made with a different setup: {state['setup']} vs {setup}")
        if state["pretrain"] is not None and prev_dir.resolve() != out.resolve():
            shutil.copytree(prev_dir / "bench_classify_pretrain", pretrained_dir, dirs_exist_ok=True)
        log(f"resuming: {len(state['units'])} units done")
    state["setup"] = setup

    def save() -> dict[str, Any]:
        summary = summarize(state, args, device, genome_len, config, lengths)
        write_json(out / "bench_classify.json", summary)
        return summary

    # 1. genomes (deterministic in the seed: a resumed call simulates the same ones)
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
    state["classes"] = [g.label for g in genomes]

    probe_len = 2**12 if quick else 2**16
    rate = measure_train_rate(config, probe_len, device)
    log(f"training throughput probe: {rate:,.0f} bases/s at L={probe_len:,}")
    call = {"budget_s": budget, "train_rate_bases_per_s": rate, "simulate_s": t_sim, "units": []}
    state["calls"].append(call)

    # 3. pretraining (once over all calls)
    pre_max = 2**11 if quick else 2**14
    pre_tokens_per_step = 2**13 if quick else 2**16
    pre_steps = max(10, pretrain_bases // pre_tokens_per_step)
    pre_need = 1.25 * pre_steps * pre_tokens_per_step / rate + 10
    if state["pretrain"] is None and pre_need > budget - (time.perf_counter() - t_start):
        log(
            f"pretraining needs ~{pre_need:.0f} s: left for a later call; only from-scratch units in this one"
        )
    elif state["pretrain"] is None:
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
        pretrained_dir.mkdir(exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copy2(work / "pretrain" / name, pretrained_dir / name)
        state["pretrain"] = {
            "steps": pre_steps,
            "max_len": pre_max,
            "seconds": time.perf_counter() - t,
            "valid": pre["valid"],
            "data": "training regions of the simulated human genome",
        }
        log(
            f"pretrained {pre_steps} steps in {state['pretrain']['seconds']:.0f} s: validation {pre['valid']}"
        )
        save()

    # 4. fine-tune and test, one (length, model) unit at a time, while the budget lasts
    calibration, ratios = 1.0, []
    for L in lengths:
        batch = batch_for(L, k, quick)
        steps = max(8, train_bases // (batch * L))
        for name in VARIANTS:
            key = unit_key(name, L)
            if key in state["units"] or (name == "pretrained" and state["pretrain"] is None):
                continue
            left = budget - (time.perf_counter() - t_start)
            guess = estimate_s(L, steps * batch * L, k, rate, quick, baseline=name == "scratch")
            need = guess * calibration
            if need > left:
                log(f"{key}: needs ~{need:.0f} s, {left:.0f} s left: left for a later call (--resume-from)")
                continue
            state["units"][key] = run_unit(
                name, L, steps, batch, k, config, manifest, work, pretrained_dir, dev, args.seed, quick
            )
            call["units"].append(key)
            u = state["units"][key]
            took = u["finetune_s"] + u["test_s"]
            # Later estimates use the worst ratio seen so far in this call: never optimistic, rarely idle.
            ratios.append(took / guess)
            calibration = 1.2 * max(ratios)
            kmer = f", k-mer {u['kmer']['test_accuracy']:.1%}" if "kmer" in u else ""
            log(f"{key}: {u['test_accuracy']:.1%}{kmer} in {took:.0f} s (estimated {need:.0f} s)")
            save()

    # 5. throughput at the longest length
    if state["throughput"] is None and budget - (time.perf_counter() - t_start) > 30:
        L = max(lengths)
        batch = 4 if device.type == "cuda" else 1
        state["throughput"] = classification_throughput(config, k, L, batch, device)
    call["seconds"] = time.perf_counter() - t_start
    summary = save()
    print_table(summary, exps)
    log(f"wrote {out / 'bench_classify.json'} ({call['seconds']:.0f} s in this call)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def run_unit(
    name: str,
    L: int,
    steps: int,
    batch: int,
    k: int,
    config: MambaConfig,
    manifest: Any,
    work: Path,
    pretrained_dir: Path,
    dev: str,
    seed: int,
    quick: bool,
) -> dict[str, Any]:
    """Fine-tune one model at one length and test it (the scratch unit also fits the k-mer baseline)."""
    common = dict(
        length=L, steps=steps, batch_size=batch, lr=2e-3, seed=seed, device=dev, quiet=True,
        split=work / "split.json", eval_every=steps, save_every=steps,
        valid_segments=max(4, min(32, 2**22 // L)), gradient_checkpointing=L >= 2**17,
        max_batch_tokens=2**13 if quick else 2**17,
    )  # fmt: skip
    init = {"model_config": config} if name == "scratch" else {"from_run": pretrained_dir}
    t = time.perf_counter()
    res = finetune(manifest, work / f"{name}_{L}", **init, **common)
    t_ft = time.perf_counter() - t
    t = time.perf_counter()
    report = evaluate_test(
        work / f"{name}_{L}", segments=test_segments_for(L, quick), device=dev, baseline=name == "scratch",
        quiet=True, plot=work / f"{name}_{L}.png",
    )  # fmt: skip
    r = report["results"][0]
    unit = {
        "length": L,
        "steps": steps,
        "batch": batch,
        "test_accuracy": r["model"]["accuracy"],
        "test_macro_f1": r["model"]["macro_f1"],
        "valid_accuracy": res["valid"]["accuracy"],
        "finetune_s": t_ft,
        "test_s": time.perf_counter() - t,
        "test_segments": r["n"],
        "confusion": r["model"]["confusion"],
    }
    if r.get("baseline"):
        unit["kmer"] = {
            "test_accuracy": r["baseline"]["accuracy"],
            "test_macro_f1": r["baseline"]["macro_f1"],
            "train_windows": report["baseline"]["train_windows"],
        }
    return unit


def summarize(
    state: dict[str, Any],
    args: argparse.Namespace,
    device: torch.device,
    genome_len: int,
    config: MambaConfig,
    lengths: list[int],
) -> dict[str, Any]:
    """The JSON file: the state a later call resumes from, plus one row per length for the table."""
    rows = []
    for L in lengths:
        row: dict[str, Any] = {"length": L}
        for name in VARIANTS:
            unit = state["units"].get(unit_key(name, L))
            row[name] = unit
            if unit and "kmer" in unit:
                row["kmer"] = unit["kmer"]
        rows.append(row)
    classes = state.get("classes", [])
    return {
        **state,
        "benchmark": "bench_classify",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "mamba_dna": mamba_dna.__version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "data": "SIMULATED great-ape genomes (mamba_dna.simulate.simulate_apes), not real DNA",
        "chance": 1 / len(classes) if classes else None,
        "model": {"preset": None if args.quick else args.preset, "config": config.to_dict()},
        "results": rows,
        "pending": [
            unit_key(n, L) for L in lengths for n in VARIANTS if unit_key(n, L) not in state["units"]
        ],
        "paper_unverified": {m: {str(2**e): v for e, v in d.items()} for m, d in PAPER_UNVERIFIED.items()},
    }


def print_table(summary: dict[str, Any], exps: list[int]) -> None:
    paper = summary["paper_unverified"]
    head = ["L", "steps x batch", "scratch", "pretrained", "k-mer", *(f"paper {m}*" for m in paper)]

    def acc(unit: dict[str, Any] | None) -> str:
        return "pending" if unit is None else f"{unit['test_accuracy']:.1%}"

    rows = []
    for r, e in zip(summary["results"], exps, strict=True):
        done = r["scratch"] or r["pretrained"]
        rows.append(
            [
                f"2^{e}",
                f"{done['steps']} x {done['batch']}" if done else "-",
                acc(r["scratch"]),
                acc(r["pretrained"]),
                acc(r.get("kmer")),
                *(f"{paper[m].get(str(2**e), float('nan')):.1f}%" for m in paper),
            ]
        )
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    print(" | ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    print(f"test accuracy on held-out simulated segments (chance {summary['chance']:.0%}); "
          f"* paper numbers recalled, UNVERIFIED (see PAPER_UNVERIFIED)")  # fmt: skip
    t = summary["throughput"]
    if t:
        print(
            f"classification throughput at L={t['length']:,} (both strands, batch {t['batch']}): "
            f"{t['bases_per_s']:,.0f} bases/s"
        )
    if summary["pending"]:
        print(f"pending (run again with --resume-from): {', '.join(summary['pending'])}")


if __name__ == "__main__":
    main()
