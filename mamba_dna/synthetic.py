"""The Mamba paper's synthetic tasks as a validation suite: train at one length, test at many.

``mamba-dna synthetic selective-copy|induction`` trains a 2-layer Mamba of the paper's width (64) on freshly
generated data every step (:mod:`mamba_dna.synthetic_data` has the generators and their provenance) with the
generic loop of :mod:`mamba_dna.training` (the optimiser rules of ``pretrain``: AdamW with decay on weight
matrices only, linear warmup then cosine, gradient clipping; checkpoints and exact ``--resume``), then scores
the answer positions of a fixed, seeded test set at every test length. ``selective=False`` trains the S4-like
ablation (dt, B and C independent of the input), and ``compare=True`` trains both, side by side.

What the paper (Gu & Dao 2023, arXiv 2312.00752) specifies and what this module does:

- Selective copying (§4.1.1, Table 1; Appendix E.1): length 4096, vocabulary 16, 16 tokens to memorise,
  2 layers, D = 64, 400K steps at a constant learning rate of 1e-4, batch 64; accuracy reported at the
  training length only. Here the length, the number of tokens and the steps are options (defaults: the paper's
  task, fewer steps); the test lengths add an extrapolation curve the paper does not report.
- Induction heads (§4.1.2, Table 2 / Table 11; Appendix E.1): 2 layers, D = 64 for Mamba, vocabulary 16,
  trained at length 256 with fresh data every step, batch 8, Adam without weight decay at a constant 1e-3
  (Mamba's better rate of {2e-4, 1e-3}), about 205K steps; tested at 2^6 .. 2^20, where Mamba is perfect at
  every length (the paper's percentages are multiples of 1/256, consistent with 256 test sequences per
  length). Here: the same task, model and batch; AdamW with the warmup-cosine schedule of ``pretrain`` and
  far fewer steps (options).

Evaluation (:func:`evaluate_length`): a fixed number of test sequences per length, from a seeded stream that
is independent of the training seed and of the batching. Lengths are scored with the largest batch that fits
a memory budget (path ``batched``), one whole sequence at a time (``single``), or, when even one sequence
does not fit (2^20 tokens on a CPU), one sequence in pieces with the recurrent state carried from piece to
piece (``pieces``): exact, since the model is causal, and bounded by the piece length.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mamba_dna.atomic import atomic_path, write_json
from mamba_dna.config import MambaConfig
from mamba_dna.errors import UserError
from mamba_dna.synthetic_data import (
    NUM_CONTENT,
    STREAM_TEST,
    STREAM_VALID,
    VOCAB_SIZE,
    SyntheticBatch,
    check_length,
    check_task,
    fixed_set,
    training_batch,
)
from mamba_dna.training import distributed as D

FORMAT = "mamba-dna-synthetic/1"
METRICS_FILE = "metrics.json"
PLOT_FILE = "accuracy.png"
RUN_NAMES = {True: "selective", False: "non-selective"}

# The paper's settings (Appendix E.1), recorded in metrics.json beside ours.
PAPER: dict[str, dict[str, Any]] = {
    "selective-copy": {
        "train_len": 4096, "n_memorize": 16, "vocab": 16, "n_layer": 2, "d_model": 64,
        "steps": 400_000, "lr": 1e-4, "batch_size": 64, "schedule": "constant",
        "accuracy": "Mamba (S6) 99.8%, Mamba with S4 56.4% at the training length (Table 1)",
    },
    "induction": {
        "train_len": 256, "test_lens": [2**k for k in range(6, 21)], "vocab": 16, "n_layer": 2,
        "d_model": 64, "steps": 204_800, "lr": 1e-3, "batch_size": 8, "weight_decay": 0.0,
        "schedule": "constant",
        "accuracy": "Mamba 100% at every length 2^6 .. 2^20 (Table 2 / Table 11)",
    },
}  # fmt: skip

# Defaults that learn in minutes rather than the paper's hundreds of thousands of steps.
DEFAULTS: dict[str, dict[str, Any]] = {
    "selective-copy": {"train_len": 4096, "batch_size": 64, "steps": 4000, "lr": 2e-3},
    "induction": {"train_len": 256, "batch_size": 8, "steps": 4000, "lr": 1e-3},
}
DEFAULT_TEST_LENS = tuple(2**k for k in range(6, 21))
# Float32 values per inner channel and position that a forward pass (no autograd) holds at its peak, with
# margin: the CPU reference materialises scan chunks (measured 14 kB per position at d_model 64, i.e. ~28),
# the Triton kernels only the projections and gates (~8).
_FLOATS_PER_CHANNEL = {"cpu": 40, "cuda": 16}
CPU_MEMORY_BUDGET = 1 << 30
CUDA_MEMORY_FRACTION = 0.5
DEFAULT_EVAL_TOKENS = {"cpu": 1 << 18, "cuda": 1 << 28}


# --------------------------------------------------------------------------------------------- settings


@dataclass
class SyntheticSpec:
    """What defines the task (saved in the run's identity: a resumed run must not change it)."""

    task: str
    train_len: int
    n_memorize: int = 16  # selective copying only
    batch_size: int = 8
    valid_samples: int = 64
    # Micro-batches hold at most this many tokens (gradient accumulation beyond): bounds training memory.
    micro_batch_tokens: int = 1 << 16

    def __post_init__(self) -> None:
        check_task(self.task)
        if self.task == "selective-copy" and self.n_memorize < 1:
            raise UserError(f"--tokens must be at least 1, got {self.n_memorize}")
        check_length(self.task, self.train_len, self.n_memorize, "--train-len")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.valid_samples < 1:
            raise UserError(f"validation samples must be at least 1, got {self.valid_samples}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.task != "selective-copy":
            d.pop("n_memorize")
        return d


def synthetic_model_config(
    d_model: int = 64, n_layer: int = 2, selective: bool = True, d_state: int = 16
) -> MambaConfig:
    """The paper's model for both tasks: 2 layers of width 64 (state size 16) over the 16-token vocabulary."""
    return MambaConfig(
        d_model=d_model, n_layer=n_layer, vocab_size=VOCAB_SIZE, d_state=d_state, selective=selective
    )


# ------------------------------------------------------------------------------------------------ task


def to_tensors(batch: SyntheticBatch) -> dict[str, torch.Tensor]:
    return {
        "tokens": torch.from_numpy(batch.tokens),
        "positions": torch.from_numpy(batch.positions),
        "answers": torch.from_numpy(batch.answers),
    }


def answer_logits_of(model: nn.Module, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Logits (b, k, vocab) at ``positions`` (b, k) of ``hidden`` (b, l, d): the LM head on those rows only."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
    return model.lm_head(hidden[rows, positions])  # type: ignore[operator]


class SyntheticTask:
    """The :class:`~mamba_dna.training.task.Task` of a synthetic task: fresh batches every step, a loss on the
    answer positions only, and validation accuracy on a fixed set at the training length."""

    def __init__(self, spec: SyntheticSpec, *, seed: int = 0, dist: D.DistInfo | None = None) -> None:
        self.spec, self.seed = spec, seed
        self.dist = dist or D.DistInfo()
        world = self.dist.world_size
        if spec.batch_size % world:
            raise UserError(f"--batch-size {spec.batch_size} is not a multiple of the {world} processes")
        self.per_rank = spec.batch_size // world
        self._valid: SyntheticBatch | None = None

    def micro_batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        s = self.spec
        b = training_batch(s.task, self.seed, step, self.dist.rank, self.per_rank, s.train_len, s.n_memorize)
        per = max(1, s.micro_batch_tokens // s.train_len)
        return [to_tensors(b.rows(i, i + per)) for i in range(0, len(b), per)]

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        hidden = model.hidden_states(batch["tokens"])  # type: ignore[operator]
        logits = answer_logits_of(model, hidden, batch["positions"]).float()
        answers = batch["answers"]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), answers.reshape(-1))
        acc = (logits.argmax(-1) == answers).float().mean()
        n = float(answers.numel())
        return loss, {"tokens": float(batch["tokens"].numel()), "weight": n, "acc": float(acc)}

    def valid_set(self) -> SyntheticBatch:
        if self._valid is None:
            s = self.spec
            self._valid = fixed_set(s.task, STREAM_VALID, 0, s.train_len, 0, s.valid_samples, s.n_memorize)
        return self._valid

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        device = next(model.parameters()).device
        mine = self.valid_set().rows(self.dist.rank, None, self.dist.world_size)
        plan = plan_eval(self.spec.train_len, len(mine), default_tokens_per_pass(model, device))
        logits = answer_logits(model, mine, plan, device)
        answers = torch.from_numpy(mine.answers)
        nll = float(
            F.cross_entropy(logits.reshape(-1, logits.shape[-1]), answers.reshape(-1), reduction="sum")
        )
        correct, n = float((logits.argmax(-1) == answers).sum()), float(answers.numel())
        sums = D.all_reduce_sum(
            torch.tensor([nll, correct, n], dtype=torch.float64, device=device), self.dist
        )
        nll, correct, n = (float(x) for x in sums)
        return {"loss": nll / n, "acc": correct / n}

    def describe(self, step: int) -> str:
        return f"{self.spec.task} L={self.spec.train_len}"

    def state_dict(self) -> dict[str, Any]:
        return {}  # every batch is a function of (seed, step, rank): nothing to save

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


# ------------------------------------------------------------------------------------------ evaluation


def bytes_per_position(config: MambaConfig, device_type: str = "cpu") -> int:
    """A generous estimate of the forward activations per position (no autograd), for memory budgets."""
    return _FLOATS_PER_CHANNEL.get(device_type, 40) * 4 * config.d_inner


def default_tokens_per_pass(model: nn.Module, device: torch.device) -> int:
    """Positions one forward call may hold: a fixed 1 GiB on the CPU, half the free memory on a GPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        budget = int(free * CUDA_MEMORY_FRACTION)
    else:
        budget = CPU_MEMORY_BUDGET
    return max(64, budget // bytes_per_position(model.config, device.type))  # type: ignore[arg-type]


@dataclass
class EvalPath:
    """How one length is scored: ``batched`` (``batch`` sequences a pass), ``single`` (one whole sequence)
    or ``pieces`` (one sequence, ``piece`` positions a pass, state carried)."""

    path: str
    batch: int
    piece: int | None = None


def plan_eval(length: int, samples: int, tokens_per_pass: int) -> EvalPath:
    if length > tokens_per_pass:
        return EvalPath("pieces", 1, tokens_per_pass)
    per_pass = min(samples, tokens_per_pass // length)
    return EvalPath("batched", per_pass) if per_pass > 1 else EvalPath("single", 1)


@torch.no_grad()
def answer_logits(
    model: nn.Module, batch: SyntheticBatch, plan: EvalPath, device: torch.device
) -> torch.Tensor:
    """Logits (b, k, vocab), float32 on the CPU, at the answer positions of ``batch``, computed along ``plan``."""
    out = []
    if plan.path != "pieces":
        for i in range(0, len(batch), plan.batch):
            t = to_tensors(batch.rows(i, i + plan.batch))
            hidden = model.hidden_states(t["tokens"].to(device))  # type: ignore[operator]
            out.append(answer_logits_of(model, hidden, t["positions"].to(device)).float().cpu())
        return torch.cat(out)
    piece = int(plan.piece or 1)
    length = batch.tokens.shape[1]
    for i in range(len(batch)):
        tokens = torch.from_numpy(batch.tokens[i : i + 1])
        positions = batch.positions[i]
        state = model.allocate_state(1, device=device, dtype=torch.float32)  # type: ignore[operator]
        logits = torch.empty(len(positions), model.config.padded_vocab_size)  # type: ignore[union-attr]
        for s in range(0, length, piece):
            e = min(s + piece, length)
            hidden = model.hidden_states(tokens[:, s:e].to(device), state)  # type: ignore[operator]
            inside = np.nonzero((positions >= s) & (positions < e))[0]
            if len(inside):
                rel = torch.from_numpy(positions[inside] - s)[None].to(device)
                logits[torch.from_numpy(inside)] = answer_logits_of(model, hidden, rel)[0].float().cpu()
        out.append(logits[None])
    return torch.cat(out)


@dataclass
class LengthResult:
    length: int
    accuracy: float  # fraction of answer tokens predicted correctly
    sequence_accuracy: float  # fraction of sequences with every answer right
    samples: int
    answers: int
    path: str
    batch: int
    piece: int | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def eval_samples_at(length: int, eval_samples: int, eval_tokens: int) -> int:
    """The number of test sequences at ``length``: ``eval_samples``, fewer where that exceeds ``eval_tokens``."""
    return max(1, min(eval_samples, eval_tokens // length))


def evaluate_length(
    model: nn.Module,
    task: str,
    length: int,
    *,
    samples: int,
    n_memorize: int = 16,
    seed: int = 0,
    device: torch.device | str = "cpu",
    tokens_per_pass: int | None = None,
) -> LengthResult:
    """Accuracy on the answer positions of ``samples`` fixed test sequences of ``length`` tokens.

    The test set is sequence ``0 .. samples - 1`` of the seeded test stream (``seed`` picks another set): the
    same for every model and training seed, and for every batching. Sequences are generated a pass's worth at
    a time, so memory stays within ``tokens_per_pass`` (default: :func:`default_tokens_per_pass`).
    """
    device = torch.device(device)
    check_length(task, length, n_memorize, "test length")
    model.eval()
    tpp = tokens_per_pass or default_tokens_per_pass(model, device)
    plan = plan_eval(length, samples, tpp)
    start = time.perf_counter()
    correct = full = answers = 0
    for i in range(0, samples, plan.batch):
        batch = fixed_set(task, STREAM_TEST, seed, length, i, min(i + plan.batch, samples), n_memorize)
        hits = answer_logits(model, batch, plan, device).argmax(-1) == torch.from_numpy(batch.answers)
        correct += int(hits.sum())
        full += int(hits.all(dim=1).sum())
        answers += hits.numel()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return LengthResult(
        length, correct / answers, full / samples, samples, answers, plan.path, plan.batch, plan.piece,
        time.perf_counter() - start,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------- test lengths


def parse_lengths(text: str, what: str = "--test-lens") -> list[int]:
    """``"256,1024,4096"``, ``"2^6,2^8"`` or a range of powers of two ``"2^6..2^20"``: sorted, unique."""
    out: set[int] = set()

    def number(s: str) -> int:
        s = s.strip().replace("**", "^")
        try:
            if "^" in s:
                base, exp = s.split("^", 1)
                return int(base) ** int(exp)
            return int(s.replace("_", ""))
        except ValueError:
            raise UserError(f"{what}: {s!r} is not a length (use e.g. 256, 2^8 or 2^6..2^20)") from None

    for item in (p for p in text.split(",") if p.strip()):
        if ".." in item:
            lo, hi = (number(x) for x in item.split("..", 1))
            if lo < 1 or hi < lo or lo & (lo - 1) or hi & (hi - 1):
                raise UserError(f"{what}: a range {item.strip()!r} needs powers of two, the smaller first")
            out.update(2**k for k in range(lo.bit_length() - 1, hi.bit_length()))
        else:
            out.add(number(item))
    if not out:
        raise UserError(f"{what}: no length given")
    bad = sorted(n for n in out if n < 1)
    if bad:
        raise UserError(f"{what}: lengths must be positive, got {bad[0]}")
    return sorted(out)


# ----------------------------------------------------------------------------------------------- a run


@dataclass
class RunResult:
    """One trained model's accuracy at every test length."""

    name: str
    selective: bool
    run_dir: str
    parameters: int
    train: dict[str, Any]
    results: list[LengthResult] = field(default_factory=list)

    def accuracy(self) -> dict[str, float]:
        return {str(r.length): r.accuracy for r in self.results}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "selective": self.selective,
            "run_dir": self.run_dir,
            "parameters": self.parameters,
            "train": self.train,
            "accuracy": self.accuracy(),
            "results": [r.to_dict() for r in self.results],
        }


def _check_out(out: Path, compare: bool) -> None:
    """--compare writes two runs below ``out``; refuse a directory that holds something else."""
    from mamba_dna.training.rundir import holds_run

    if not compare or not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    if holds_run(out):
        raise UserError(f"{out}: holds a single training run, not a --compare pair; choose a new --out")
    ours = {*RUN_NAMES.values(), METRICS_FILE, PLOT_FILE}
    other = sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and p.name not in ours)
    if other:
        raise UserError(
            f"{out}: is not empty ({other[0]}, ...) and holds no --compare run; choose a new --out"
        )


def run_synthetic(
    task: str,
    out: str | Path,
    *,
    train_len: int | None = None,
    test_lens: list[int] | None = None,
    n_memorize: int = 16,
    selective: bool = True,
    compare: bool = False,
    d_model: int = 64,
    n_layer: int = 2,
    d_state: int = 16,
    steps: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    warmup_steps: int | None = None,
    weight_decay: float = 0.1,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    eval_samples: int = 256,
    eval_tokens: int | None = None,
    eval_seed: int = 0,
    tokens_per_pass: int | None = None,
    eval_every: int | None = None,
    save_every: int | None = None,
    resume: bool = False,
    quiet: bool = False,
    on_length: Callable[[str, LengthResult, int, int], None] | None = None,
) -> dict[str, Any]:
    """Train on ``task`` at ``train_len`` into ``out`` and score every test length; returns ``metrics.json``.

    ``compare=True`` trains the selective model into ``out/selective`` and the S4-like ablation into
    ``out/non-selective`` (same seed, same data); otherwise ``out`` is the one run's directory. Defaults are
    :data:`DEFAULTS` per task. ``on_length(name, result, done, total)`` is called after each test length.
    Writes ``metrics.json`` and ``accuracy.png`` into ``out`` (atomically) and returns the metrics.
    """
    from mamba_dna.model import MambaLMHeadModel
    from mamba_dna.training import TrainConfig, train
    from mamba_dna.training.rundir import check_run_dir, run_identity

    check_task(task)
    d = DEFAULTS[task]
    train_len = d["train_len"] if train_len is None else train_len
    steps = d["steps"] if steps is None else steps
    lr = d["lr"] if lr is None else lr
    batch_size = d["batch_size"] if batch_size is None else batch_size
    lens = list(DEFAULT_TEST_LENS) if test_lens is None else sorted(set(test_lens))
    spec = SyntheticSpec(task, train_len, n_memorize, batch_size)
    for n in lens:
        check_length(task, n, n_memorize, "test length")
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    if not lr > 0:
        raise UserError(f"--lr must be positive, got {lr}")
    if eval_samples < 1:
        raise UserError(f"--eval-samples must be at least 1, got {eval_samples}")
    if eval_tokens is not None and eval_tokens < 1:
        raise UserError(f"--eval-tokens must be at least 1, got {eval_tokens}")
    dist = D.setup(device)
    eval_tokens = eval_tokens or DEFAULT_EVAL_TOKENS["cuda" if dist.device.type == "cuda" else "cpu"]
    out = Path(out)
    _check_out(out, compare)
    variants = [True, False] if compare else [selective]
    cfg = TrainConfig.for_steps(
        steps,
        warmup_steps=warmup_steps,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        eval_every=eval_every,
        save_every=save_every,
        device=device,
        precision=precision,
    )
    task_spec = {"task": "synthetic", **spec.to_dict()}
    run_dirs = {s: (out / RUN_NAMES[s]) if compare else out for s in variants}
    configs = {s: synthetic_model_config(d_model, n_layer, s, d_state) for s in variants}
    # Refuse every run directory before training any, so that a --compare never half-starts.
    for s in variants:
        check_run_dir(run_dirs[s], run_identity(configs[s].to_dict(), cfg, task_spec), resume)

    # Train every model first, then evaluate: under torchrun the other ranks are then done when rank 0
    # starts its (possibly long) evaluation, instead of waiting for it inside a collective.
    trained: list[tuple[bool, nn.Module, dict[str, Any]]] = []
    for s in variants:
        torch.manual_seed(seed)
        model = MambaLMHeadModel(configs[s])
        task_obj = SyntheticTask(spec, seed=seed, dist=dist)
        result = train(model, task_obj, cfg, run_dirs[s], resume=resume, quiet=quiet, spec=task_spec)
        trained.append((s, model, result))
    runs: list[RunResult] = []
    for s, model, result in trained if dist.is_main else []:
        run = RunResult(
            RUN_NAMES[s], s, str(run_dirs[s]), model.num_parameters(),  # type: ignore[operator]
            {k: result.get(k) for k in ("step", "steps", "elapsed_s", "valid")}
            | {"lr": lr, "batch_size": batch_size, "seed": seed, "warmup_steps": cfg.warmup_steps,
               "weight_decay": weight_decay},
        )  # fmt: skip
        for i, n in enumerate(lens):
            r = evaluate_length(
                model, task, n, samples=eval_samples_at(n, eval_samples, eval_tokens), n_memorize=n_memorize,
                seed=eval_seed, device=dist.device, tokens_per_pass=tokens_per_pass,
            )  # fmt: skip
            run.results.append(r)
            if on_length is not None:
                on_length(run.name, r, i + 1, len(lens))
        runs.append(run)
    metrics = {
        "format": FORMAT,
        "task": task,
        "train_len": train_len,
        **({"n_memorize": n_memorize} if task == "selective-copy" else {}),
        "test_lens": lens,
        "eval": {"samples": eval_samples, "tokens_per_length": eval_tokens, "seed": eval_seed,
                 "device": str(dist.device), "scored": "answer positions only"},
        "model": {"d_model": d_model, "n_layer": n_layer, "d_state": d_state, "vocab_size": VOCAB_SIZE},
        "paper": PAPER[task],
        "accuracy": {r.name: r.accuracy() for r in runs},
        "runs": [r.to_dict() for r in runs],
    }  # fmt: skip
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / METRICS_FILE, metrics)
        plot_accuracy(metrics, out / PLOT_FILE)
    metrics["metrics_path"] = str(out / METRICS_FILE)
    metrics["plot_path"] = str(out / PLOT_FILE)
    return metrics


# ----------------------------------------------------------------------------------------------- report

_TITLES = {"selective-copy": "Selective copying", "induction": "Induction heads"}


def plot_accuracy(metrics: dict[str, Any], png_path: str | Path) -> None:
    """``accuracy.png``: answer accuracy (%) against test length on a log2 axis, one curve per run, written
    atomically. Uses matplotlib's object API with the Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    styles = {"selective": ("o-", "tab:blue", "Mamba (selective S6)"),
              "non-selective": ("s--", "tab:red", "S4-like ablation (non-selective)")}  # fmt: skip
    lens = metrics["test_lens"]
    for run in metrics["runs"]:
        fmt, color, label = styles.get(run["name"], ("o-", None, run["name"]))
        xs = [r["length"] for r in run["results"]]
        ax.plot(xs, [100 * r["accuracy"] for r in run["results"]], fmt, color=color, label=label, ms=4)
    if metrics["task"] == "induction":
        # The paper's Mamba row: 100% at every length it tested (2^6 .. 2^20), for reference.
        ref = [n for n in PAPER["induction"]["test_lens"] if lens[0] <= n <= lens[-1]]
        if ref:
            ax.plot(ref, [100] * len(ref), ":", color="tab:green", lw=1.5, label="paper: Mamba (Table 2)")
    train_len = metrics["train_len"]
    ax.axvline(train_len, color="grey", ls=":", lw=1)
    ax.annotate(f" trained at {train_len:,}", (train_len, 99), rotation=90, fontsize=8, color="grey",
                ha="right", va="top")  # fmt: skip
    # Guessing among the 14 content tokens: what a model that learned nothing about the task scores.
    ax.axhline(100 / NUM_CONTENT, color="grey", ls="--", lw=0.8)
    ax.annotate("chance (1/14)", (lens[-1], 100 / NUM_CONTENT + 1), fontsize=8, color="grey", ha="right")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(lens))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"$2^{{{int(math.log2(n))}}}$" if n & (n - 1) == 0 else f"{n:,}" for n in lens])
    ax.set_ylim(-2, 102)
    ax.set_xlabel("test sequence length (log2)")
    ax.set_ylabel("accuracy on answer tokens (%)")
    task = metrics["task"]
    extra = f", {metrics['n_memorize']} tokens to memorise" if task == "selective-copy" else ""
    ax.set_title(f"{_TITLES.get(task, task)} (vocabulary 16{extra})")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    with atomic_path(png_path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def table_rows(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the accuracy table: a row per length, an accuracy column per run, then how the
    length was evaluated (the runs share the model size, hence the path) and on how many sequences."""
    runs = metrics["runs"]
    header = ["length", *(run["name"] for run in runs), "eval path", "samples"]
    rows = []
    for i, n in enumerate(metrics["test_lens"]):
        row = [f"{n:,}" + (" (train)" if n == metrics["train_len"] else "")]
        row += [f"{100 * run['results'][i]['accuracy']:.1f}%" for run in runs]
        first = runs[0]["results"][i] if runs else None
        if first:
            piece = first["piece"]
            row += [
                first["path"] + (f" of {piece:,}" if piece else f" x{first['batch']}"),
                str(first["samples"]),
            ]
        rows.append(row)
    return header, rows
