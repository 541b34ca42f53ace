"""Pretraining: next-base prediction on random genome windows with a sequence-length warmup curriculum.

``pretrain(fastas, out)`` is what ``mamba-dna pretrain`` runs; call it from a notebook the same way::

    from mamba_dna.pretrain import pretrain
    result = pretrain(["genome.fa.gz"], "runs/genome", preset="1.4M", min_len=1024, max_len=2**16, steps=5000)
    result["valid"]["bpb"], result["markov"]["valid_bpb"]

Data. Training windows are drawn by :class:`~mamba_dna.datasets.sampler.WindowSampler` (a pure function of
seed, process rank and step: resume is exact), reverse-complemented with probability 0.5 unless ``rc=False``
(on the bundled mtDNA, whose strands differ in composition, augmentation still helps: without it the tiny model
overfits the 58 kb of training sequence within the quickstart's budget, see benchmarks/RESULTS.md). Held-out
validation data is, in order of precedence: the records of ``valid_fasta``; the regions of ``valid_bed``
(training then avoids them and ``max_len`` bases on either side); or by default the last ``valid_fraction``
of every record, with a gap of ``max_len`` bases before it that no training window touches.

Loss. See :mod:`mamba_dna.training.lm`: positions 1..L-1 are predicted, only A/C/G/T are scored (N is input,
never a target), and "tokens" counts scored bases.

Validation. At every curriculum length ``L`` that fits in a validation region, the model scores a
deterministic set of validation windows of ``L`` bases (the regions tiled from their starts; at most
``valid_tokens`` bases, evenly spread when there are more); windows are independent, so a base near a
window start has little context. Metrics: ``loss@L``, ``bpb@L``, ``ppl@L`` per length, and ``loss``,
``bpb``, ``ppl`` at the longest validated length (which picks the best checkpoint). The k-mer Markov baseline
(fitted on the same training regions; order and strandedness chosen on the validation regions) is scored on
the same windows: ``markov_bpb@L`` and ``markov_bpb``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mamba_dna.atomic import write_json
from mamba_dna.config import MambaConfig
from mamba_dna.config import preset as make_preset
from mamba_dna.errors import UserError
from mamba_dna.progress import stderr
from mamba_dna.training import distributed as D
from mamba_dna.training.baseline import MarkovBaseline, fit_markov_baseline, load_markov, save_markov
from mamba_dna.training.curriculum import CurriculumPlan, plan_curriculum
from mamba_dna.training.lm import lm_loss, metrics_from, score_windows
from mamba_dna.training.loop import train
from mamba_dna.training.rundir import check_run_dir, check_world_size, run_identity
from mamba_dna.training.task import TrainConfig

DEFAULT_GENOME = "great_apes_mtdna"
CURRICULUM = "curriculum.json"
# Defaults chosen so that the no-argument quickstart (CPU, 2 cores) finishes in about three minutes and
# beats the k-mer Markov baseline on held-out data; see benchmarks/RESULTS.md for the measurement.
DEFAULTS: dict[str, Any] = {
    "preset": "tiny",
    "min_len": 2**10,
    "max_len": 2**10,
    "steps": 250,
    "lr": 5e-3,
    "min_lr_ratio": 0.01,
    "tokens_per_step_floor_cpu": 2**11,
    "tokens_per_step_floor_cuda": 2**16,
    "valid_fraction": 0.1,
    "valid_tokens": 2**16,
    "markov_max_bases": 2**26,
}


# --------------------------------------------------------------------------------------------- data


@dataclass
class PretrainData:
    """Which files and regions are training data and which are validation data."""

    train_files: list[Any]  # FastaFile
    train_regions: list[Any]  # Region
    valid_files: list[Any]
    valid_regions: list[Any]
    valid_source: str  # "holdout", "bed" or "fasta"

    def _file_of(self, files: list[Any], name: str) -> Any:
        return next(f for f in files if name in f)

    def valid_windows(self, length: int, max_tokens: int) -> list[np.ndarray]:
        """Validation regions tiled into windows of ``length`` from their starts; at most ``max_tokens``
        bases, evenly spaced over all candidates when there are more."""
        candidates = [(r, s) for r in self.valid_regions for s in range(r.start, r.end - length + 1, length)]
        keep = max(1, max_tokens // length)
        if len(candidates) > keep:
            idx = np.unique(np.linspace(0, len(candidates) - 1, keep).round().astype(int))
            candidates = [candidates[i] for i in idx]
        return [self._file_of(self.valid_files, r.name).tokens(r.name, s, s + length) for r, s in candidates]

    def arrays(self, which: str, max_bases: int) -> list[np.ndarray]:
        """Token arrays of the training or validation regions; regions beyond ``max_bases`` in total are read
        in evenly spaced pieces so that a huge genome's baseline fits in memory."""
        files, regions = (
            (self.train_files, self.train_regions)
            if which == "train"
            else (self.valid_files, self.valid_regions)
        )
        total = sum(len(r) for r in regions)
        out = []
        if total <= max_bases:
            for r in regions:
                out.append(self._file_of(files, r.name).tokens(r.name, r.start, r.end))
            return out
        piece = 2**16
        n_pieces = max(1, max_bases // piece)
        spots = np.linspace(0, total - piece, n_pieces).astype(np.int64)
        offsets = np.cumsum([0] + [len(r) for r in regions])
        for pos in spots:
            k = int(np.searchsorted(offsets, pos, side="right") - 1)
            r = regions[k]
            start = r.start + int(pos - offsets[k])
            end = min(r.end, start + piece)
            out.append(self._file_of(files, r.name).tokens(r.name, start, end))
        return out

    def spec(self) -> dict[str, Any]:
        def files(fs: list[Any]) -> list[dict[str, Any]]:
            return [{"path": str(f.path), "size": os.path.getsize(f.path)} for f in fs]

        return {
            "train_fastas": files(self.train_files),
            "train_regions": [[r.name, r.start, r.end] for r in self.train_regions],
            "valid_source": self.valid_source,
            "valid_fastas": files(self.valid_files),
            "valid_regions": [[r.name, r.start, r.end] for r in self.valid_regions],
        }


def _subtract(length: int, holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[0, length) minus the (clipped, possibly overlapping) holes."""
    out, pos = [], 0
    for s, e in sorted((max(0, s), min(length, e)) for s, e in holes):
        if s > pos:
            out.append((pos, s))
        pos = max(pos, e)
    if pos < length:
        out.append((pos, length))
    return out


def prepare_data(
    fastas: Sequence[str | os.PathLike[str]],
    *,
    max_len: int,
    valid_fasta: Sequence[str | os.PathLike[str]] | None = None,
    valid_bed: str | os.PathLike[str] | None = None,
    valid_fraction: float = DEFAULTS["valid_fraction"],
) -> PretrainData:
    """Open and check the FASTA files and split them into training and validation regions.

    Raises a :class:`UserError` when no training region can hold a window of ``max_len`` bases.
    """
    from mamba_dna.datasets.fasta import open_fasta
    from mamba_dna.datasets.regions import Region, check_regions, holdout_split, read_bed

    train_files = [open_fasta(p) for p in fastas]
    lengths: dict[str, int] = {}
    for f in train_files:
        for name, n in f.lengths().items():
            if lengths.setdefault(name, n) != n:
                raise UserError(
                    f"record '{name}' appears in several FASTA files with different lengths; "
                    "rename it in one of them"
                )
    gap = max_len
    if valid_fasta:
        valid_files = [open_fasta(p) for p in valid_fasta]
        valid = [Region(r.name, 0, r.length) for f in valid_files for r in f.records]
        train = [Region(name, 0, n) for name, n in lengths.items()]
        source = "fasta"
    elif valid_bed is not None:
        valid = read_bed(valid_bed)
        if not valid:
            raise UserError(f"{valid_bed}: holds no region")
        check_regions(valid, lengths)
        valid_files = train_files
        holes: dict[str, list[tuple[int, int]]] = {}
        for r in valid:
            holes.setdefault(r.name, []).append((r.start - gap, r.end + gap))
        train = [
            Region(name, s, e) for name, n in lengths.items() for s, e in _subtract(n, holes.get(name, []))
        ]
        source = "bed"
    else:
        if not 0 < valid_fraction < 1:
            raise UserError(f"--valid-fraction must be between 0 and 1, got {valid_fraction}")
        train, valid = holdout_split(lengths, valid_fraction, gap)
        valid_files = train_files
        source = "holdout"
    train = [r for r in train if len(r) >= max_len]
    if not train:
        longest = max(lengths.values(), default=0)
        how = {
            "holdout": f"minus its last {valid_fraction:.0%} (validation) and a gap of {gap:,} bases",
            "bed": f"minus the --valid-bed regions and {gap:,} bases on either side of them",
            "fasta": "",
        }[source]
        raise UserError(
            f"no training region holds a window of --max-len {max_len:,} bases: the longest record has "
            f"{longest:,} bases{', ' + how if how else ''}; use a smaller --max-len or a longer genome"
        )
    return PretrainData(train_files, train, valid_files, valid, source)


# --------------------------------------------------------------------------------------------- task


class PretrainTask:
    """The language-model :class:`~mamba_dna.training.task.Task` with a sequence-length warmup curriculum."""

    def __init__(
        self,
        data: PretrainData,
        plan: CurriculumPlan,
        *,
        dist: D.DistInfo,
        seed: int = 0,
        rc_prob: float = 0.5,
        max_n_fraction: float = 0.1,
        valid_tokens: int = DEFAULTS["valid_tokens"],
        markov: MarkovBaseline | None = None,
    ) -> None:
        self.data, self.plan, self.dist = data, plan, dist
        self.seed, self.rc_prob, self.max_n_fraction = seed, rc_prob, max_n_fraction
        self.valid_tokens = valid_tokens
        self.markov = markov
        longest_valid = max((len(r) for r in data.valid_regions), default=0)
        self.valid_lengths = [L for L in plan.lengths if longest_valid >= L]
        self.skipped_lengths = [L for L in plan.lengths if longest_valid < L]
        if not self.valid_lengths:
            raise UserError(
                f"the validation data is too short: its longest region has {longest_valid:,} bases, less than "
                f"--min-len {plan.min_len:,}; use a larger --valid-fraction, other --valid-* data, or a "
                "smaller --min-len"
            )
        self._samplers: dict[int, Any] = {}
        self._windows: dict[int, list[np.ndarray]] = {}
        self._markov_bpb: dict[int, float] = {}

    def sampler(self, length: int) -> Any:
        from mamba_dna.datasets.sampler import WindowSampler

        if length not in self._samplers:
            self._samplers[length] = WindowSampler(
                self.data.train_files,
                length,
                regions=self.data.train_regions,
                max_n_fraction=self.max_n_fraction,
                rc_prob=self.rc_prob,
                seed=self.seed,
            )
        return self._samplers[length]

    def micro_batches(self, step: int) -> list[torch.Tensor]:
        stage = self.plan.stage_at(step)
        x = self.sampler(stage.length).batch(step, stage.per_rank, self.dist.rank)
        return list(x.split(stage.micro_batch))

    def loss(self, model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return lm_loss(model, batch)

    def validation_windows(self, length: int) -> list[np.ndarray]:
        if length not in self._windows:
            self._windows[length] = self.data.valid_windows(length, self.valid_tokens)
        return self._windows[length]

    def markov_bpb(self, length: int) -> float | None:
        if self.markov is None:
            return None
        if length not in self._markov_bpb:
            self._markov_bpb[length] = self.markov.bits_per_base(self.validation_windows(length))
        return self._markov_bpb[length]

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        device = next(model.parameters()).device
        out: dict[str, float] = {}
        for length in self.valid_lengths:
            windows = self.validation_windows(length)[self.dist.rank :: self.dist.world_size]
            nll, n = score_windows(model, windows, device=device, batch_tokens=self.plan.max_batch_tokens)
            sums = D.all_reduce_sum(torch.tensor([nll, n], dtype=torch.float64, device=device), self.dist)
            out.update(metrics_from(float(sums[0]), float(sums[1]), f"@{length}"))
            mk = self.markov_bpb(length)
            if mk is not None:
                out[f"markov_bpb@{length}"] = mk
        head = self.valid_lengths[-1]
        out.update({k: out[f"{k}@{head}"] for k in ("loss", "bpb", "ppl")})
        if f"markov_bpb@{head}" in out:
            out["markov_bpb"] = out[f"markov_bpb@{head}"]
        return out

    def describe(self, step: int) -> str:
        return self.plan.describe(step)

    def state_dict(self) -> dict[str, Any]:
        # Everything the task does is a function of the step, so resuming needs nothing from here; the
        # lengths tell a reader of a checkpoint directory (e.g. `embed`) what the model is trained for.
        return {"min_len": self.plan.min_len, "max_len": self.plan.max_len}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


# ------------------------------------------------------------------------------------------- pretrain


def default_tokens_per_step(max_len: int, world_size: int, device: torch.device) -> int:
    """``max(max_len x processes, floor)``: the floor is 2^11 bases on a CPU (two 1 kb windows: many small
    steps are what a CPU can afford) and 2^16 on a GPU (batches large enough to keep it busy)."""
    floor = DEFAULTS["tokens_per_step_floor_cuda" if device.type == "cuda" else "tokens_per_step_floor_cpu"]
    return max(max_len * world_size, floor)


def print_plan(plan: CurriculumPlan, task: PretrainTask, data: PretrainData, quiet: bool) -> None:
    """The stage plan as a rich table on stderr."""
    if quiet:
        return
    from rich.table import Table

    table = Table(title="sequence-length warmup", title_justify="left")
    for col in ("stage", "length", "steps", "batch", "micro-batch x accum", "bases/step", "validated"):
        table.add_column(col, justify="right")
    for s in plan.stages:
        table.add_row(
            f"{s.index + 1}/{len(plan.stages)}",
            f"{s.length:,}",
            f"{s.start_step + 1:,}-{s.end_step:,} ({s.steps:,})",
            f"{s.batch_size:,}" + (f" ({s.per_rank:,}/proc)" if plan.world_size > 1 else ""),
            f"{s.micro_batch:,} x {s.accumulation}",
            f"{s.tokens_per_step:,}",
            "yes" if s.length in task.valid_lengths else "no (longer than validation regions)",
        )
    stderr.print(table)
    n_train = sum(len(r) for r in data.train_regions)
    n_valid = sum(len(r) for r in data.valid_regions)
    stderr.print(
        f"training on {n_train:,} bases in {len(data.train_regions)} regions; validating on {n_valid:,} "
        f"bases ({data.valid_source})"
    )


def pretrain(
    fastas: Sequence[str | os.PathLike[str]] | None,
    out: str | os.PathLike[str],
    *,
    preset: str = DEFAULTS["preset"],
    model_config: MambaConfig | None = None,
    min_len: int = DEFAULTS["min_len"],
    max_len: int = DEFAULTS["max_len"],
    steps: int = DEFAULTS["steps"],
    tokens_per_step: int | None = None,
    max_batch_tokens: int | None = None,
    final_fraction: float = 0.5,
    lr: float = DEFAULTS["lr"],
    warmup_steps: int | None = None,
    min_lr_ratio: float = DEFAULTS["min_lr_ratio"],
    weight_decay: float = 0.1,
    grad_clip: float = 1.0,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    rc: bool = True,
    max_n_fraction: float = 0.1,
    valid_fasta: Sequence[str | os.PathLike[str]] | None = None,
    valid_bed: str | os.PathLike[str] | None = None,
    valid_fraction: float = DEFAULTS["valid_fraction"],
    valid_tokens: int = DEFAULTS["valid_tokens"],
    eval_every: int | None = None,
    save_every: int | None = None,
    log_every: int = 10,
    keep_last: int = 2,
    gradient_checkpointing: bool = False,
    resume: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Pretrain a Mamba language model on ``fastas`` (default: the bundled great-ape mtDNA) into ``out``.

    Returns the training result (see :func:`mamba_dna.training.train`) plus ``markov`` (the baseline's
    order and validation bits per base), ``curriculum`` (the stage plan) and ``config`` (the model).
    """
    from mamba_dna.datasets.fasta import bundled_genome
    from mamba_dna.model import MambaLMHeadModel

    dist = D.setup(device)
    out = Path(out)
    fasta_paths = [Path(p) for p in fastas] if fastas else [bundled_genome(DEFAULT_GENOME)]
    if tokens_per_step is None:
        tokens_per_step = default_tokens_per_step(max_len, dist.world_size, dist.device)
    plan = plan_curriculum(
        min_len, max_len, steps, tokens_per_step,
        max_batch_tokens=max_batch_tokens, world_size=dist.world_size, final_fraction=final_fraction,
    )  # fmt: skip
    config = model_config or make_preset(preset)
    if not 0 <= max_n_fraction <= 1:
        raise UserError(f"--max-n-fraction must be in [0, 1], got {max_n_fraction}")
    if valid_tokens < min_len:
        raise UserError(f"--valid-tokens ({valid_tokens:,}) must be at least --min-len ({min_len:,})")
    rc_prob = 0.5 if rc else 0.0
    cfg = TrainConfig.for_steps(
        steps,
        warmup_steps=warmup_steps,
        lr=lr,
        min_lr_ratio=min_lr_ratio,
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
    data = prepare_data(
        fasta_paths,
        max_len=max_len,
        valid_fasta=valid_fasta,
        valid_bed=valid_bed,
        valid_fraction=valid_fraction,
    )
    spec = {
        "task": "pretrain",
        **data.spec(),
        "curriculum": {k: v for k, v in plan.to_dict().items() if k not in ("stages", "world_size")}
        | {"lengths": plan.lengths, "stage_starts": [s.start_step for s in plan.stages]},
        "rc_prob": rc_prob,
        "max_n_fraction": max_n_fraction,
        "valid_tokens": valid_tokens,
    }
    # Refuse a run directory that holds another run before spending time on the baseline.
    if resume:
        check_world_size(out, dist.world_size)
    check_run_dir(out, run_identity(config.to_dict(), cfg, spec), resume)

    markov = None
    if dist.is_main:
        markov = load_markov(out) if resume else None
        if markov is None:
            markov = fit_markov_baseline(
                data.arrays("train", DEFAULTS["markov_max_bases"]),
                data.arrays("valid", DEFAULTS["markov_max_bases"]),
            )
    task = PretrainTask(
        data, plan, dist=dist, seed=seed, rc_prob=rc_prob, max_n_fraction=max_n_fraction,
        valid_tokens=valid_tokens, markov=markov,
    )  # fmt: skip
    if dist.is_main:
        print_plan(plan, task, data, quiet)
        if task.skipped_lengths and not quiet:
            stderr.print(
                f"note: no validation at length(s) {', '.join(f'{L:,}' for L in task.skipped_lengths)}: "
                "longer than every validation region"
            )
        if markov is not None and not quiet:
            stderr.print(
                f"k-mer Markov baseline: order {markov.order}"
                f"{' (both strands)' if markov.both_strands else ''}, validation {markov.valid_bpb:.4f} bits/base"
            )

    def on_start(run_dir: Path) -> None:
        write_json(run_dir / CURRICULUM, plan.to_dict())
        if markov is not None:
            save_markov(markov, run_dir)

    torch.manual_seed(seed)
    model = MambaLMHeadModel(config)
    result = train(model, task, cfg, out, resume=resume, quiet=quiet, spec=spec, on_start=on_start)
    result["markov"] = markov.summary() if markov is not None else None
    result["rc_prob"] = rc_prob
    result["curriculum"] = plan.to_dict()
    result["config"] = config.to_dict()
    result["parameters"] = model.num_parameters()
    result["rank"] = dist.rank
    return result


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(length, loss, bits/base, Markov bits/base) rows of the final validation, for the CLI's table."""
    valid = result.get("valid") or {}
    rows = []
    for key in sorted((k for k in valid if k.startswith("bpb@")), key=lambda k: int(k[4:])):
        L = key[4:]
        mk = valid.get(f"markov_bpb@{L}")
        rows.append(
            (
                f"{int(L):,}",
                f"{valid[f'loss@{L}']:.4f}",
                f"{valid[key]:.4f}",
                "-" if mk is None else f"{mk:.4f}",
            )
        )
    return rows
