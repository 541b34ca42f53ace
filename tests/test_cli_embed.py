"""``mamba-dna embed`` and ``mamba-dna info emb.h5``: JSON summary, clean errors, SIGKILL then --resume."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from mamba_dna.cli.main import app
from typer.testing import CliRunner, Result

from mamba_dna.checkpoint import save_model
from mamba_dna.config import MambaConfig
from mamba_dna.embedding import load_embeddings, store
from mamba_dna.model import MambaLMHeadModel


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    # The killed subprocess runs with OMP_NUM_THREADS=1; the same thread count here keeps every
    # reduction in the same order, so resumed and uninterrupted files can be compared bit for bit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_fasta(path: Path, lengths: dict[str, int]) -> Path:
    rng = np.random.default_rng(len(lengths))
    with open(path, "w") as f:
        for name, n in lengths.items():
            seq = "".join(rng.choice(list("ACGT"), n))
            f.write(f">{name}\n" + "\n".join(seq[i : i + 60] for i in range(0, n, 60)) + "\n")
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("run")
    save_model(MambaLMHeadModel(MambaConfig(d_model=32, n_layer=2, d_state=4)), d)
    return d


@pytest.fixture(scope="module")
def fasta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fasta(tmp_path_factory.mktemp("fa") / "g.fa", {"a": 900, "b": 400})


def embed(*args: object) -> Result:
    return CliRunner().invoke(app, ["embed", *map(str, args)])


def assert_one_clean_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_embed_json_summary_then_info(tmp_path: Path, run_dir: Path, fasta: Path) -> None:
    out = tmp_path / "emb.h5"
    res = embed(run_dir, fasta, "--out", out, "--window", 256, "--stride", 128, "--rc-average", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["windows"] == 7 + 3 and summary["d_model"] == 32 and summary["rc_average"] is True
    assert summary["out"] == str(out) and (summary["window"], summary["stride"]) == (256, 128)
    attrs = load_embeddings(out).attrs
    assert attrs["command"].startswith("mamba-dna embed ") and "--rc-average" in attrs["command"]

    shown = CliRunner().invoke(app, ["info", str(out)])
    assert shown.exit_code == 0, shown.output
    for text in (
        "mamba-dna embeddings, complete",
        "/embeddings",
        "10 x 32",
        "float16",
        "lzf",
        "checkpoint_sha256",
    ):
        assert text in " ".join(shown.stdout.split()), text  # rich wraps at the test console's width
    assert attrs["checkpoint_sha256"][:40] in shown.stdout.replace("\n", "").replace(" ", "")
    as_json = json.loads(CliRunner().invoke(app, ["info", "--json", str(out)]).stdout)
    shapes = {d["name"]: d["shape"] for d in as_json["datasets"]}
    assert shapes == {"/embeddings": [10, 32], "/record": [10], "/start": [10], "/end": [10]}
    assert as_json["attributes"]["window"] == 256 and as_json["complete"] is True

    per_base = tmp_path / "pb.hdf5"
    assert embed(run_dir, fasta, "-o", per_base, "--pool", "none", "--quiet").exit_code == 0
    as_json = json.loads(CliRunner().invoke(app, ["info", "--json", str(per_base)]).stdout)
    assert as_json["per_base"]["tracks"] == 2 and as_json["per_base"]["bases"] == 1300
    assert {t["name"]: t["shape"] for t in as_json["per_base"]["items"]} == {
        "/per_base/a": [900, 32],
        "/per_base/b": [400, 32],
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing checkpoint",
        "window longer than a record",
        "missing output dir",
        "existing output",
        "missing fasta",
    ],
)
def test_bad_inputs_give_one_line_and_touch_nothing(
    tmp_path: Path, run_dir: Path, fasta: Path, case: str
) -> None:
    out = tmp_path / "emb.h5"
    out.write_bytes(b"an earlier result")
    args: list[object]
    if case == "missing checkpoint":
        args, expect = [tmp_path / "no_run", fasta, "-o", out, "--force"], ["no_run", "no such checkpoint"]
    elif case == "window longer than a record":
        args = [run_dir, fasta, "-o", out, "--pool", "none", "--window", 500, "--force"]
        expect = ["--window 500 is longer than record 'b' (400 bases)"]
    elif case == "missing output dir":
        args, expect = [run_dir, fasta, "-o", tmp_path / "nowhere" / "e.h5"], ["does not exist", "nowhere"]
    elif case == "existing output":
        args, expect = [run_dir, fasta, "-o", out], [str(out), "exists; use --force"]
    else:
        args, expect = [run_dir, tmp_path / "missing.fa", "-o", out, "--force"], ["missing.fa"]
    assert_one_clean_error(embed(*args), *expect)
    assert out.read_bytes() == b"an earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.h5"]  # no partial file either


def _start_and_kill(
    args: list[object], partial: Path, ready: Callable[[dict[str, np.ndarray]], bool]
) -> None:
    """Run ``mamba-dna embed`` in a subprocess; SIGKILL it once the recorded progress satisfies ``ready``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mamba_dna.cli.main", "embed", *map(str, args), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"the run ended before it could be killed: {proc.stderr.read().decode()}")
            if (partial / "progress.npz").exists():  # replaced whole by a rename: never torn
                with np.load(partial / "progress.npz") as progress:
                    if ready(dict(progress)):
                        break
            time.sleep(0.01)
        else:
            pytest.fail("the run never got far enough")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _assert_same_contents(a: Path, b: Path) -> None:
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        names: list[str] = []
        fa.visit(lambda n: names.append(n) if isinstance(fa[n], h5py.Dataset) else None)
        other: list[str] = []
        fb.visit(lambda n: other.append(n) if isinstance(fb[n], h5py.Dataset) else None)
        assert sorted(names) == sorted(other) and names
        for n in names:
            np.testing.assert_array_equal(fa[n][()], fb[n][()], err_msg=n)
            assert dict(fa[n].attrs) == dict(fb[n].attrs)
        for k in ("settings", "window", "pool", "checkpoint_sha256", "model_config"):
            assert fa.attrs[k] == fb.attrs[k]


def test_resume_after_sigkill_pooled(tmp_path: Path, run_dir: Path) -> None:
    fa = write_fasta(tmp_path / "g.fa", {"x": 12_000, "y": 9_000})
    args: list[object] = [run_dir, fa, "--window", 64, "--batch-size", 4, "--dtype", "float32"]
    out, partial = tmp_path / "e.h5", tmp_path / "e.h5.partial"
    _start_and_kill([*args, "-o", out], partial, lambda p: p["rows"] >= 24)
    assert partial.is_dir() and not out.exists() and not (partial / "embeddings.h5").exists()
    with np.load(partial / "progress.npz") as p:
        assert 24 <= p["rows"] < 329

    assert_one_clean_error(embed(*args, "-o", out), "use --resume")
    assert_one_clean_error(embed(*args, "-o", out, "--resume", "--stride", 32), "different stride")
    with open(partial / "lock") as held:  # as if another process were still working on it
        fcntl.flock(held, fcntl.LOCK_EX)
        assert_one_clean_error(embed(*args, "-o", out, "--resume"), "in use by another process")
    res = embed(*args, "-o", out, "--resume", "--quiet")
    assert res.exit_code == 0, res.output
    assert not partial.exists() and load_embeddings(out).attrs["resumed"] == 1

    reference = tmp_path / "ref.h5"
    assert embed(*args, "-o", reference, "--quiet").exit_code == 0
    _assert_same_contents(out, reference)

    # Resuming a finished run (a job queue retrying it) leaves the file alone; other settings do not.
    before = out.stat().st_mtime_ns
    res = embed(*args, "-o", out, "--resume")
    assert res.exit_code == 0 and "already complete" in res.stderr and out.stat().st_mtime_ns == before
    assert_one_clean_error(embed(*args, "-o", out, "--resume", "--pool", "last"), "exists; use --force")


def test_resume_after_sigkill_per_base_rc_average(tmp_path: Path, run_dir: Path) -> None:
    # Two records streamed side by side, each first through its reverse strand: kill while the first
    # is done, the second is in its forward pass and the third in its reverse pass.
    fa = write_fasta(tmp_path / "g.fa", {"r0": 3_000, "r1": 5_000, "r2": 2_000, "r3": 2_500})
    args: list[object] = [run_dir, fa, "--pool", "none", "--rc-average", "--window", 100, "--batch-size", 2]
    out, partial = tmp_path / "e.h5", tmp_path / "e.h5.partial"
    _start_and_kill([*args, "-o", out], partial, lambda p: p["next_job"] >= 3)
    assert partial.is_dir() and not out.exists()
    assert list(partial.glob("reverse-*.bin"))  # reverse strands of the records in flight
    res = embed(*args, "-o", out, "--resume", "--quiet")
    assert res.exit_code == 0, res.output
    assert not partial.exists()

    reference = tmp_path / "ref.h5"
    assert embed(*args, "-o", reference, "--quiet").exit_code == 0
    _assert_same_contents(out, reference)


def test_resume_refuses_a_damaged_or_foreign_work_directory(
    tmp_path: Path, run_dir: Path, fasta: Path
) -> None:
    out, partial = tmp_path / "e.h5", tmp_path / "e.h5.partial"
    partial.mkdir()  # a directory of that name that no run made
    assert_one_clean_error(embed(run_dir, fasta, "-o", out, "--resume"), "not a partial embedding run")

    # A run interrupted after its last batch, whose row file then lost its tail (a full disk, a bad copy).
    args: list[object] = [run_dir, fasta, "-o", out, "--window", 64, "--quiet"]
    assert embed(*args, "--force").exit_code == 0
    out.unlink()

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store, "assemble", interrupt)
        assert embed(*args).exit_code != 0
    rows = partial / "pooled-0.bin"
    rows.write_bytes(rows.read_bytes()[:-8])
    assert_one_clean_error(embed(*args, "--resume"), "shorter than its recorded progress")
    assert not out.exists()


def test_force_replaces_only_a_finished_file(tmp_path: Path, run_dir: Path, fasta: Path) -> None:
    out = tmp_path / "e.h5"
    out.write_bytes(b"old")
    assert_one_clean_error(embed(run_dir, fasta, "-o", out, "--force", "--region", "zz:1-10"), "zz")
    assert out.read_bytes() == b"old"
    res = embed(run_dir, fasta, "-o", out, "--force", "--region", "a:1-100", "--quiet")
    assert res.exit_code == 0, res.output
    emb = load_embeddings(out)
    assert list(emb.record) == ["a"] and (emb.start[0], emb.end[0]) == (0, 100)
