"""The generic training loop: run directory, exact resume (SIGINT and kill -9), NaN stop, run-dir refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mamba_dna.checkpoint import load_model
from mamba_dna.errors import UserError
from mamba_dna.training import NonFiniteLoss, train
from mamba_dna.training.task import TrainConfig


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    # One intra-op thread: the subprocesses run with OMP_NUM_THREADS=1 too, so every reduction runs in the
    # same order, and on a shared 2-core machine one thread per process is also the faster choice.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# A real (if small) task, importable both here and in the subprocesses that get interrupted: next-base
# prediction on sequences in which every odd position repeats the base before it.
TOY = textwrap.dedent(
    """
    import math, sys, time
    import numpy as np
    import torch
    from mamba_dna.config import MambaConfig
    from mamba_dna.model import MambaLMHeadModel
    from mamba_dna.training import TrainConfig, train
    from mamba_dna.training.lm import lm_loss

    class ToyTask:
        def __init__(self, length=16, batch=4, micro=2, nan_at=None, sleep=0.0):
            self.length, self.batch, self.micro = length, batch, micro
            self.nan_at, self.sleep, self.step = nan_at, sleep, 0

        def micro_batches(self, step):
            self.step = step
            if self.sleep:
                time.sleep(self.sleep)  # a slow data source, so that a signal lands mid-run
            x = np.random.default_rng([7, step]).integers(5, 9, size=(self.batch, self.length))
            x[:, 1::2] = x[:, 0::2]
            return list(torch.from_numpy(x).split(self.micro))

        def loss(self, model, batch):
            loss, m = lm_loss(model, batch)
            if self.nan_at is not None and self.step >= self.nan_at:
                loss = loss * float("nan")
            return loss, m

        def evaluate(self, model, step):
            x = torch.from_numpy(np.random.default_rng([8]).integers(5, 9, size=(2, self.length)))
            x[:, 1::2] = x[:, 0::2]
            return {"loss": float(lm_loss(model, x)[0])}

        def describe(self, step):
            return f"toy L={self.length}"

        def state_dict(self):
            return {"length": self.length}

        def load_state_dict(self, state):
            assert state == {"length": self.length}

    def make_model(d_model=8, seed=0):
        torch.manual_seed(seed)
        return MambaLMHeadModel(MambaConfig(d_model=d_model, n_layer=1, d_state=4))

    def config(steps=12, **kw):
        base = dict(steps=steps, lr=1e-2, warmup_steps=2, save_every=3, eval_every=4, log_every=1, keep_last=2)
        return TrainConfig(**(base | kw))

    def run(run_dir, resume=False, sleep=0.0, steps=12, **task_kw):
        return train(make_model(), ToyTask(sleep=sleep, **task_kw), config(steps), run_dir, resume=resume,
                     quiet=True)

    if __name__ == "__main__":
        from mamba_dna.errors import UserError
        try:
            run(sys.argv[1], resume=len(sys.argv) > 2, sleep=0.25)
        except UserError as e:  # what the CLI's report_user_errors does
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)
    """
)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    (d / "toy.py").write_text(TOY)
    sys.path.insert(0, str(d))
    import toy as module

    yield module
    sys.path.remove(str(d))
    sys.modules.pop("toy", None)


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory):
    """An uninterrupted 12-step run."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    toy.run(run_dir)
    return run_dir


def _losses(run_dir: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["event"], r["step"], r.get("loss"), r.get("loss_avg")) for r in rows]


def _assert_same_losses(a: Path, b: Path) -> None:
    la, lb = _losses(a), _losses(b)
    assert [x[:2] for x in la] == [x[:2] for x in lb]
    for x, y in zip(la, lb, strict=True):
        for u, v in zip(x[2:], y[2:], strict=True):
            assert (u is None and v is None) or u == pytest.approx(v, rel=1e-5, abs=1e-6), (x, y)


def test_run_directory_contents(reference, toy):
    names = {p.name for p in reference.iterdir()}
    assert {"config.json", "model.safetensors", "train_config.json", "trainer_state.json", "metrics.jsonl",
            "loss.png", "checkpoints", "best", "run.json"} <= names  # fmt: skip
    assert (reference / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = json.loads((reference / "trainer_state.json").read_text())
    assert state["step"] == 12 and state["status"] == "finished" and state["world_size"] == 1
    assert state["tokens"] == 12 * 4 * 15  # every target of every window is a base
    assert state["best_valid_loss"] is not None and state["elapsed_s"] > 0
    ckpts = sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert ckpts == ["step-0000009", "step-0000012"]  # keep_last=2
    ck = reference / "checkpoints" / "step-0000012"
    assert {p.name for p in ck.iterdir()} >= {"optimizer.safetensors", "optimizer.json", "scheduler.json",
                                               "rng.safetensors", "rng.json", "task_state.json"}  # fmt: skip
    opt = load_file(str(ck / "optimizer.safetensors"))
    assert any(k.endswith(".exp_avg") for k in opt) and any(k.endswith(".exp_avg_sq") for k in opt)
    assert load_file(str(ck / "rng.safetensors"))["torch.rank0"].dtype == torch.uint8
    assert json.loads((ck / "task_state.json").read_text()) == {"length": 16}
    assert json.loads((ck / "scheduler.json").read_text())["last_epoch"] == 12
    # The top-level weights are the latest and open with load_model.
    m = load_model(reference)
    assert torch.equal(m.backbone.embedding.weight, load_model(ck).backbone.embedding.weight)
    rows = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["event"] == "train"]
    eval_rows = [r for r in rows if r["event"] == "eval"]
    assert [r["step"] for r in train_rows] == list(range(1, 13))
    assert [r["step"] for r in eval_rows] == [4, 8, 12]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"] - 0.1  # it learns the repeated bases
    assert all(r["lr"] > 0 and r["grad_norm"] >= 0 and r["tokens"] > 0 for r in train_rows)
    best = json.loads((reference / "best" / "metrics.json").read_text())
    assert best["loss"] == pytest.approx(state["best_valid_loss"])


def _start(toy, run_dir: Path, *extra: str) -> subprocess.Popen:
    code = Path(toy.__file__)
    return subprocess.Popen(
        [sys.executable, str(code), str(run_dir), *extra],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.communicate()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.05)


def test_sigint_saves_a_checkpoint_and_resume_is_exact(toy, reference, tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(toy, run_dir)
    _wait_for(run_dir / "checkpoints" / "step-0000003", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "error: interrupted at step" in err and "--resume" in err
    state = json.loads((run_dir / "trainer_state.json").read_text())
    assert state["status"] == "interrupted" and 3 <= state["step"] < 12
    # The checkpoint of the interrupted step exists even though it is not a multiple of save_every.
    assert (run_dir / "checkpoints" / f"step-{state['step']:07d}").is_dir()
    toy.run(run_dir, resume=True)
    _assert_same_losses(run_dir, reference)
    final = load_model(run_dir).backbone.embedding.weight
    assert torch.allclose(final, load_model(reference).backbone.embedding.weight, atol=1e-6)


def test_kill_9_after_a_checkpoint_then_resume_is_exact(toy, reference, tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(toy, run_dir)
    _wait_for(run_dir / "checkpoints" / "step-0000003", proc)
    time.sleep(0.4)  # somewhere in steps 4..5: after a checkpoint, before the next
    proc.kill()  # SIGKILL: no handler runs
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    toy.run(run_dir, resume=True)
    _assert_same_losses(run_dir, reference)
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(toy, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLoss) as e:
        toy.run(run_dir, nan_at=7)
    msg = str(e.value)
    assert "loss nan at step 8 of 12" in msg and "checkpoints/step-0000006" in msg
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-0000003", "step-0000006"]
    state = json.loads((run_dir / "trainer_state.json").read_text())
    assert state["status"].startswith("failed") and state["step"] == 7
    assert all(r[1] <= 7 for r in _losses(run_dir))  # nothing of step 8 was logged


def test_gradient_accumulation_averages_like_one_batch(toy, tmp_path):
    """4 sequences as 4 micro-batches of 1 give the same step as one batch of 4."""
    results = []
    for micro in (4, 1):
        model = toy.make_model()
        train(model, toy.ToyTask(micro=micro), toy.config(steps=2), tmp_path / f"m{micro}", quiet=True)
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_a_directory_holding_another_run_is_refused(toy, reference, tmp_path):
    with pytest.raises(UserError, match="already holds this run; add --resume"):
        toy.run(reference)
    with pytest.raises(UserError, match=r"already holds a different run \(train.lr 0.01 -> 0.02"):
        train(toy.make_model(), toy.ToyTask(), toy.config(lr=2e-2), reference, quiet=True)
    with pytest.raises(UserError, match=r"was trained with a different model config .*d_model 8 -> 16"):
        train(toy.make_model(d_model=16), toy.ToyTask(), toy.config(), reference, resume=True, quiet=True)
    with pytest.raises(UserError, match="holds no run to resume"):
        toy.run(tmp_path / "nothing", resume=True)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    with pytest.raises(UserError, match="is not empty and holds no mamba-dna run"):
        toy.run(tmp_path / "notes")


def test_resuming_a_finished_run_returns_its_result(toy, reference):
    r = toy.run(reference, resume=True)
    assert r["step"] == 12 and r["best_valid_loss"] is not None


def test_json_mode_writes_nothing_on_stdout(toy, tmp_path, capfd):
    toy.run(tmp_path / "run", steps=2)
    assert capfd.readouterr().out == ""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_second_sigint_aborts_without_saving():
    from mamba_dna.training.loop import StopRequest

    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)


def test_benchmark_quick_mode(tmp_path):
    """benchmarks/bench_train.py --quick: the CPU smoke mode of the GPU training benchmark (seconds)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"
    spec = importlib.util.spec_from_file_location("bench_train", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--quick", "--out", str(tmp_path / "b.json")])
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["length"] for r in rows] == [128, 256]
    assert all(r["bases_per_s"] > 0 and np.isfinite(r["final_loss"]) for r in rows)
    bench.main(["--quick", "--out", str(tmp_path)])  # a directory: bench_train.json goes inside
    assert len(json.loads((tmp_path / "bench_train.json").read_text())["rows"]) == 2


def test_profile_families_put_every_scan_pass_with_its_direction() -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_train.py"
    spec = importlib.util.spec_from_file_location("profile_train", path)
    prof = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prof)
    assert prof.family("_scan_fwd_kernel") == prof.family("_scan_fwd_fix_kernel") == "scan fwd"
    assert prof.family("_scan_bwd_kernel") == "scan bwd"
    assert prof.family("nvjet_sm90_tst_320x128_64x3_1x2_h_bz_coopB_TNT") == "gemm"


def test_train_config_for_steps_derives_the_schedule_left_as_none() -> None:
    cfg = TrainConfig.for_steps(250, lr=1e-3)
    assert (cfg.steps, cfg.warmup_steps, cfg.eval_every, cfg.save_every, cfg.lr) == (250, 25, 25, 25, 1e-3)
    assert TrainConfig.for_steps(5000).warmup_steps == 100  # at most 100 warmup steps
    assert (TrainConfig.for_steps(5).eval_every, TrainConfig.for_steps(5).warmup_steps) == (1, 0)
    given = TrainConfig.for_steps(250, warmup_steps=7, eval_every=3, save_every=9)
    assert (given.warmup_steps, given.eval_every, given.save_every) == (7, 3, 9)
