"""Fine-tuning a Mamba backbone to classify DNA segments by genome of origin (the great-ape task).

``finetune(manifest, out, from_run=..., length=...)`` is what ``mamba-dna finetune`` runs; from a notebook::

    from mamba_dna.classify import finetune
    result = finetune(None, "runs/apes-cls", from_run="runs/apes-lm", length=1024, steps=300)
    result["valid"]["accuracy"]

The task (:class:`FinetuneTask`) plugs into the generic loop (:func:`mamba_dna.training.train`), which owns the
optimiser, schedule, checkpoints, exact resume, SIGINT/NaN handling, progress and DDP. Loss: cross-entropy of
the class logits. Validation (``evaluate``): cross-entropy (``loss``, which picks the best checkpoint) and
``accuracy`` on a fixed set of validation segments, on the forward strand.

Long segments: a step's batch is split into micro-batches of at most ``max_batch_tokens`` bases (at least one
segment), so at 2^20 bases every segment is its own micro-batch and the loop accumulates gradients; with
``gradient_checkpointing`` the activations of one layer at a time are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mamba_dna.classifier import POOLINGS, SequenceClassifier, write_classifier_info
from mamba_dna.classify_data import Segments, build_split, check_split, open_classes
from mamba_dna.config import MambaConfig
from mamba_dna.errors import UserError
from mamba_dna.manifest import Manifest, read_manifest
from mamba_dna.progress import stderr
from mamba_dna.splits import Split
from mamba_dna.training import distributed as D

SPLIT_FILE = "split.json"
# Defaults for the no-argument quickstart on CPU (bundled mtDNA, tiny model): 100 steps of 8 segments of 1 kb
# (half the bases of the default pretraining), sized to take a few minutes on 2 cores. That budget is too small
# to learn this task: fine-tuned from the quickstart's pretrained model the validation accuracy stays at chance
# (25 %, loss ln 4 throughout; re-measured 2026-12-06), against 32-34 % for the k-mer baseline, and
# from scratch with lr 1e-2 and 150 steps it reached 32.8 % (benchmarks/RESULTS.md). Larger runs: --steps.
DEFAULTS: dict[str, Any] = {
    "length": 1024,
    "steps": 100,
    "batch_size": 8,
    "lr": 4e-3,
    "preset": "tiny",
    "pooling": "mean",
    "max_batch_tokens": 2**16,
    "valid_tokens": 2**22,  # per class, at most; with at most 32 segments per class
}


def default_valid_segments(length: int, valid_tokens: int = DEFAULTS["valid_tokens"]) -> int:
    """Validation segments per class: 32 short ones, fewer long ones (at least 4, ~``valid_tokens`` bases).

    Validation runs every tenth of the run; 32 segments per class keep it a small part of the time while
    still telling accuracies apart by a few points."""
    return int(min(32, max(4, valid_tokens // length)))


class FinetuneTask:
    """The classification :class:`~mamba_dna.training.task.Task`: balanced random segments, cross-entropy."""

    def __init__(
        self,
        segments: Segments,
        length: int,
        batch_size: int,
        *,
        dist: D.DistInfo,
        max_batch_tokens: int = DEFAULTS["max_batch_tokens"],
        valid_per_class: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {batch_size}")
        if batch_size % dist.world_size:
            raise UserError(
                f"--batch-size {batch_size} is not a multiple of the number of processes ({dist.world_size})"
            )
        self.segments, self.length, self.batch_size, self.dist = segments, length, batch_size, dist
        self.per_rank = batch_size // dist.world_size
        self.micro = max(1, min(self.per_rank, max_batch_tokens // length))
        self.valid_per_class = valid_per_class or default_valid_segments(length)
        self._valid: tuple[list[np.ndarray], list[int]] | None = None

    def micro_batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        # Items are numbered over the whole batch (all ranks), so the data do not depend on the world size.
        first = self.dist.rank * self.per_rank
        items = [
            self.segments.train_item(step, i, self.batch_size, self.length)
            for i in range(first, first + self.per_rank)
        ]
        x = torch.from_numpy(np.stack([t for t, _ in items]).astype(np.int64))
        y = torch.tensor([k for _, k in items], dtype=torch.long)
        return [
            {"input_ids": x[i : i + self.micro], "labels": y[i : i + self.micro]}
            for i in range(0, self.per_rank, self.micro)
        ]

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch["input_ids"]).float()
        labels = batch["labels"]
        loss = F.cross_entropy(logits, labels)
        n = float(labels.numel())
        accuracy = float((logits.argmax(-1) == labels).float().mean())
        return loss, {"weight": n, "tokens": n * self.length, "accuracy": accuracy}

    def validation_segments(self) -> tuple[list[np.ndarray], list[int]]:
        if self._valid is None:
            self._valid = self.segments.fixed("valid", self.length, self.valid_per_class)
        return self._valid

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        device = next(model.parameters()).device
        xs, ys = self.validation_segments()
        mine = list(range(self.dist.rank, len(xs), self.dist.world_size))
        nll, correct = 0.0, 0.0
        per = max(1, 2 * self.micro)  # no activations are kept for a backward pass: twice the training batch
        for i in range(0, len(mine), per):
            idx = mine[i : i + per]
            x = torch.from_numpy(np.stack([xs[j] for j in idx]).astype(np.int64)).to(device)
            y = torch.tensor([ys[j] for j in idx], device=device)
            logits = model(x).float()
            nll += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(-1) == y).sum())
        sums = torch.tensor([nll, correct, float(len(mine))], dtype=torch.float64, device=device)
        nll, correct, n = D.all_reduce_sum(sums, self.dist).tolist()
        return {"loss": nll / n, "accuracy": correct / n}

    def describe(self, step: int) -> str:
        return f"finetune L={self.length:,}"

    def state_dict(self) -> dict[str, Any]:
        return {}  # every segment is a function of the step: nothing to carry over

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _initial_model(
    from_run: str | os.PathLike[str] | None,
    preset: str | None,
    model_config: MambaConfig | None,
    num_classes: int,
    pooling: str,
    seed: int,
) -> SequenceClassifier:
    from mamba_dna.checkpoint import load_model
    from mamba_dna.config import preset as make_preset

    torch.manual_seed(seed)  # the head's (and, from scratch, the backbone's) initial weights
    if from_run is None:
        config = model_config or make_preset(preset or DEFAULTS["preset"])
        return SequenceClassifier(config, num_classes, pooling)
    if preset is not None or model_config is not None:
        raise UserError("--preset sets the size of a model trained from scratch; --from already fixes it")
    return SequenceClassifier.from_language_model(load_model(from_run), num_classes, pooling)


def finetune(
    manifest: str | os.PathLike[str] | Manifest | None,
    out: str | os.PathLike[str],
    *,
    from_run: str | os.PathLike[str] | None = None,
    length: int = DEFAULTS["length"],
    preset: str | None = None,
    model_config: MambaConfig | None = None,
    pooling: str = DEFAULTS["pooling"],
    steps: int = DEFAULTS["steps"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    warmup_steps: int | None = None,
    weight_decay: float = 0.1,
    grad_clip: float = 1.0,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    split: Split | str | os.PathLike[str] | None = None,
    valid_segments: int | None = None,
    max_batch_tokens: int = DEFAULTS["max_batch_tokens"],
    eval_every: int | None = None,
    save_every: int | None = None,
    log_every: int = 10,
    keep_last: int = 2,
    gradient_checkpointing: bool = False,
    resume: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Fine-tune a classifier of the manifest's classes on segments of ``length`` bases, into ``out``.

    Args:
        manifest: a manifest file, a :class:`Manifest`, or None for the bundled great-ape mtDNA.
        from_run: a pretrained run or checkpoint directory (ours or mamba_ssm's); None trains from scratch
            with ``preset`` (default ``tiny``) or ``model_config``, the baseline the paper compares
            pretraining against.
        pooling: ``mean``, ``last`` or ``rc-mean`` (see :mod:`mamba_dna.classifier`).
        split_fractions: train, valid, test shares of each genome's blocks (see :mod:`mamba_dna.splits`).
        split: use this split (a :class:`~mamba_dna.splits.Split` or another run's ``split.json``) instead
            of making one, e.g. to compare runs at several lengths on the same held-out data.
        Other arguments: as for ``pretrain`` (see :class:`~mamba_dna.training.task.TrainConfig`).

    Returns the training result (see :func:`mamba_dna.training.train`; ``valid`` holds the final validation
    ``loss`` and ``accuracy``) plus ``classifier`` (the contents of ``classifier.json``).
    """
    from mamba_dna.training.loop import train
    from mamba_dna.training.rundir import check_run_dir, run_identity
    from mamba_dna.training.task import TrainConfig

    if pooling not in POOLINGS:
        raise UserError(f"--pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
    if length < 8:
        raise UserError(f"--length must be at least 8 bases, got {length}")
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    dist = D.setup(device)
    man = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    genomes = open_classes(man, length)
    if split is None:
        split = build_split(man, genomes, length, seed=seed, fractions=split_fractions)
    else:
        split = split if isinstance(split, Split) else Split.load(split)
        check_split(split, genomes, length)
    model = _initial_model(from_run, preset, model_config, len(genomes), pooling, seed)
    segments = Segments(genomes, split, seed=seed)
    task = FinetuneTask(
        segments,
        length,
        batch_size,
        dist=dist,
        max_batch_tokens=max_batch_tokens,
        valid_per_class=valid_segments,
    )
    cfg = TrainConfig.for_steps(
        steps,
        warmup_steps=warmup_steps,
        lr=lr,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        seed=seed,
        eval_every=eval_every,
        save_every=save_every,
        keep_last=keep_last,
        log_every=log_every,
        device=device,
        precision=precision,
        gradient_checkpointing=gradient_checkpointing,
    )
    files = {str(g.fasta.path): os.path.getsize(g.fasta.path) for g in genomes}
    spec = {
        "task": "finetune",
        "manifest": man.to_dict(),
        "fasta_sizes": files,
        "from": None if from_run is None else str(Path(from_run).resolve()),
        "length": length,
        "pooling": pooling,
        "batch_size": batch_size,
        "valid_per_class": task.valid_per_class,
        "split": _digest(split.to_dict()),
    }
    check_run_dir(Path(out), run_identity(model.config.to_dict(), cfg, spec), resume)
    info = {
        "labels": [g.label for g in genomes],
        "pooling": pooling,
        "segment_length": length,
        "chance": 1 / len(genomes),
        "manifest_source": man.source,
        "note": man.note,
        "manifest": man.to_dict(),
        "from": spec["from"],
        "preset": None
        if from_run is not None or model_config is not None
        else (preset or DEFAULTS["preset"]),
        "parameters": model.num_parameters(),
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "split_file": SPLIT_FILE,
        "split": {
            "source": split.source,
            "gap": split.gap,
            "fractions": list(split.fractions),
            "bases": {
                g.label: {s: split.bases(g.label, s) for s in ("train", "valid", "test")} for g in genomes
            },
        },
    }
    if dist.is_main and not quiet:
        if man.note:
            stderr.print(f"note: {man.note}")
        stderr.print(
            f"{len(genomes)} classes ({', '.join(info['labels'])}; chance {info['chance']:.0%}), "
            f"segments of {length:,} bases, {'from ' + str(from_run) if from_run else 'from scratch'}, "
            f"{model.num_parameters():,} parameters"
        )

    def on_start(run_dir: Path) -> None:
        split.save(run_dir / SPLIT_FILE)
        write_classifier_info(run_dir, info)

    result = train(model, task, cfg, out, resume=resume, quiet=quiet, spec=spec, on_start=on_start)
    result["classifier"] = info
    result["rank"] = dist.rank
    return result
