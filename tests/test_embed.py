"""``mamba_dna.embed``: values equal the model's, windows and coordinates, rc-averaging, bounded memory."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import mamba_dna
from mamba_dna.checkpoint import load_model, save_model
from mamba_dna.config import MambaConfig
from mamba_dna.embedding import (
    DEFAULT_WINDOW,
    escape_name,
    load_embeddings,
    trained_length,
    unescape_name,
    window_offsets,
)
from mamba_dna.embedding.journal import RowFiles
from mamba_dna.errors import UserError
from mamba_dna.model import MambaLMHeadModel
from mamba_dna.tokenizer import VOCAB, encode, reverse_complement

# d_state 4 instead of 16: the same code paths at a quarter of the CPU reference scan's cost.
CONFIG = {"d_model": 32, "n_layer": 2, "d_state": 4}
RECORDS = {"r1": 700, "chr/2": 1234, "r3": 300}
TOL = {"float32": {"rtol": 1e-4, "atol": 1e-4}, "float16": {"rtol": 2e-3, "atol": 2e-3}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    # Tiny tensors: a second intra-op thread only adds synchronisation (and on a busy CI machine,
    # oversubscription makes it many times slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_fasta(path: Path, records: dict[str, str]) -> Path:
    with open(path, "w") as f:
        for name, seq in records.items():
            f.write(f">{name}\n")
            for i in range(0, len(seq), 60):
                f.write(seq[i : i + 60] + "\n")
    return path


def random_dna(n: int, seed: int) -> str:
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), n))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("run")
    save_model(MambaLMHeadModel(MambaConfig(**CONFIG)), d)
    return d


@pytest.fixture(scope="module")
def model(run_dir: Path) -> MambaLMHeadModel:
    return load_model(run_dir)


@pytest.fixture(scope="module")
def seqs() -> dict[str, str]:
    return {name: random_dna(n, i) for i, (name, n) in enumerate(RECORDS.items())}


@pytest.fixture(scope="module")
def fasta(tmp_path_factory: pytest.TempPathFactory, seqs: dict[str, str]) -> Path:
    return write_fasta(tmp_path_factory.mktemp("fa") / "seqs.fa", seqs)


def hidden(model: MambaLMHeadModel, seq: str | np.ndarray) -> np.ndarray:
    """The model API's per-base embeddings of one sequence, in one pass: (length, d_model) float32."""
    toks = encode(seq) if isinstance(seq, str) else seq
    with torch.no_grad():
        return model.hidden_states(torch.from_numpy(toks.astype(np.int64))[None])[0].numpy()


def rc_hidden(model: MambaLMHeadModel, seq: str) -> np.ndarray:
    """Reverse-complement strand's embeddings, realigned to forward coordinates."""
    return hidden(model, np.ascontiguousarray(reverse_complement(encode(seq))))[::-1]


def test_window_tiling_shifts_the_last_window_back_to_the_record_end() -> None:
    assert window_offsets(1000, 512, 256) == [(0, 512), (256, 768), (488, 1000)]
    assert window_offsets(1024, 512, 512) == [(0, 512), (512, 1024)]  # exact fit: no extra window
    assert window_offsets(1100, 512, 512) == [(0, 512), (512, 1024), (588, 1100)]
    assert window_offsets(300, 512, 128) == [(0, 300)]  # shorter than the window: the whole record
    assert window_offsets(1000, 100, 300) == [(0, 100), (300, 400), (600, 700), (900, 1000)]
    assert window_offsets(950, 100, 300) == [(0, 100), (300, 400), (600, 700), (850, 950)]


def test_record_names_escape_reversibly() -> None:
    for name in ("chr1", "a/b", "50%/x", "%2F", ".", "..", "HLA:01"):
        key = escape_name(name)
        assert "/" not in key and key not in (".", "..")
        assert unescape_name(key) == name


@pytest.mark.parametrize("pool,dtype", [("mean", "float16"), ("last", "float32")])
def test_pooled_values_coordinates_and_attributes(
    tmp_path: Path,
    run_dir: Path,
    model: MambaLMHeadModel,
    fasta: Path,
    seqs: dict[str, str],
    pool: str,
    dtype: str,
) -> None:
    out = mamba_dna.embed(run_dir, fasta, tmp_path / "e.h5", window=512, stride=256, pool=pool, dtype=dtype)
    assert out == tmp_path / "e.h5" and not (tmp_path / "e.h5.partial").exists()
    emb = load_embeddings(out)
    expected = [(name, s, e) for name in RECORDS for s, e in window_offsets(RECORDS[name], 512, 256)]
    assert list(zip(emb.record, emb.start, emb.end, strict=True)) == expected
    assert emb.embeddings.shape == (len(expected), CONFIG["d_model"])
    assert emb.embeddings.dtype == np.dtype(dtype)
    for row, (name, s, e) in zip(emb.embeddings, expected, strict=True):
        h = hidden(model, seqs[name][s:e])
        ref = h.mean(axis=0) if pool == "mean" else h[-1]
        np.testing.assert_allclose(row.astype(np.float32), ref, **TOL[dtype])

    a = emb.attrs
    weights = (run_dir / "model.safetensors").read_bytes()
    assert a["checkpoint_sha256"] == hashlib.sha256(weights).hexdigest()
    assert a["model_config"] == MambaConfig(**CONFIG).to_dict()
    assert (a["window"], a["stride"], a["pool"], a["dtype"], a["rc_average"]) == (
        512,
        256,
        pool,
        dtype,
        False,
    )
    assert a["window_source"] == "--window"
    assert a["tokenizer"] == list(VOCAB)
    assert a["input_fasta"] == [str(fasta.resolve())]
    assert a["mamba_dna_version"] == mamba_dna.__version__
    assert a["complete"] is True and "mamba_dna.embed(" in a["command"]
    created = datetime.datetime.fromisoformat(a["created"])
    assert created.utcoffset() == datetime.timedelta(0)
    with h5py.File(out, "r") as f:
        for name in ("embeddings", "record", "start", "end"):
            assert f[name].chunks and f[name].compression == "lzf" and f[name].maxshape[0] is None
        assert f["start"].dtype == np.int64 and "_progress" not in f


def test_per_base_streams_records_exactly(
    tmp_path: Path, run_dir: Path, model: MambaLMHeadModel, fasta: Path, seqs: dict[str, str]
) -> None:
    # Pieces of 128 with the state carried, two records side by side: the same as one pass per record.
    out = mamba_dna.embed(
        run_dir, [fasta], tmp_path / "pb.h5", window=128, pool="none", dtype="float32", batch_size=2
    )
    emb = load_embeddings(out)
    assert len(emb) == 0 and emb.attrs["stride"] == 128
    assert {(t.record, t.start, t.end) for t in emb.tracks} == {(n, 0, k) for n, k in RECORDS.items()}
    assert {t.key for t in emb.tracks} == {"r1", "chr%2F2", "r3"}  # '/' escaped in the dataset name
    for name, seq in seqs.items():
        np.testing.assert_allclose(emb.per_base(name), hidden(model, seq), **TOL["float32"])
    np.testing.assert_allclose(
        emb.per_base("chr/2", 100, 350), hidden(model, seqs["chr/2"])[100:350], **TOL["float32"]
    )
    with pytest.raises(UserError, match="not inside one track"):
        emb.per_base("r3", 0, 301)


def test_rc_average_is_the_mean_of_both_strands(
    tmp_path: Path, run_dir: Path, model: MambaLMHeadModel, fasta: Path, seqs: dict[str, str]
) -> None:
    kw = {"rc_average": True, "dtype": "float32", "batch_size": 2}
    pooled = load_embeddings(
        mamba_dna.embed(run_dir, fasta, tmp_path / "m.h5", window=400, pool="mean", **kw)
    )
    last = load_embeddings(mamba_dna.embed(run_dir, fasta, tmp_path / "l.h5", window=400, pool="last", **kw))
    per_base = load_embeddings(
        mamba_dna.embed(run_dir, fasta, tmp_path / "p.h5", window=96, pool="none", **kw)
    )
    assert pooled.attrs["rc_average"] is True
    for i, (name, s, e) in enumerate(zip(pooled.record, pooled.start, pooled.end, strict=True)):
        fwd, rev = hidden(model, seqs[name][s:e]), rc_hidden(model, seqs[name][s:e])
        np.testing.assert_allclose(pooled.embeddings[i], (fwd.mean(0) + rev.mean(0)) / 2, **TOL["float32"])
        # 'last' for each strand is the position that has seen the whole window: forward end, reverse start.
        np.testing.assert_allclose(last.embeddings[i], (fwd[-1] + rev[0]) / 2, **TOL["float32"])
    for name, seq in seqs.items():
        ref = (hidden(model, seq) + rc_hidden(model, seq)) / 2
        np.testing.assert_allclose(per_base.per_base(name), ref, **TOL["float32"])


def test_rc_average_of_a_reverse_complement_palindrome(tmp_path: Path, run_dir: Path) -> None:
    # P equals its own reverse complement, so the reverse pass sees exactly the forward tokens: the pooled
    # rc-average equals the forward-only vector, and the per-base rc-average at i, (h[i] + h[n-1-i]) / 2,
    # equals the one at the mirrored position n-1-i. The per-base symmetry holds bit for bit (the two
    # passes run alone with identical shapes and float addition commutes); pooled, the reverse strand is
    # another row of the same batch, which a GEMM may round differently in the last bit.
    half = random_dna(250, 7)
    pal = half + "".join(reverse_complement(encode(half)).astype(np.uint8).view("S1").astype(str))
    pal = pal.translate(str.maketrans("\x05\x06\x07\x08", "ACGT"))
    assert np.array_equal(reverse_complement(encode(pal)), encode(pal))
    fa = write_fasta(tmp_path / "pal.fa", {"pal": pal})
    kw = {"dtype": "float32", "batch_size": 1}
    for pool in ("mean", "last"):
        fwd = load_embeddings(mamba_dna.embed(run_dir, fa, tmp_path / f"f{pool}.h5", pool=pool, **kw))
        avg = load_embeddings(
            mamba_dna.embed(run_dir, fa, tmp_path / f"a{pool}.h5", pool=pool, rc_average=True, **kw)
        )
        np.testing.assert_allclose(avg.embeddings, fwd.embeddings, rtol=1e-6, atol=1e-6)
    track = load_embeddings(
        mamba_dna.embed(run_dir, fa, tmp_path / "pb.h5", pool="none", window=64, rc_average=True, **kw)
    ).per_base("pal")
    np.testing.assert_array_equal(track, track[::-1])
    assert not np.allclose(track[0], track[1])  # not trivially symmetric


def test_regions_and_bed(
    tmp_path: Path, run_dir: Path, model: MambaLMHeadModel, fasta: Path, seqs: dict[str, str]
) -> None:
    bed = tmp_path / "r.bed"
    bed.write_text("track name=x\nr1\t100\t300\nchr/2\t0\t50\n")
    regions = ["r3:11-110", bed]  # samtools 1-based inclusive: bases [10, 110)
    out = mamba_dna.embed(
        run_dir, fasta, tmp_path / "r.h5", regions=regions, window=50, pool="none", dtype="float32"
    )
    emb = load_embeddings(out)
    spans = sorted((t.record, t.start, t.end, t.key) for t in emb.tracks)
    assert spans == [
        ("chr/2", 0, 50, "chr%2F2:1-50"),
        ("r1", 100, 300, "r1:101-300"),
        ("r3", 10, 110, "r3:11-110"),
    ]
    # A region is a sequence of its own: context starts at the region start.
    np.testing.assert_allclose(emb.per_base("r1"), hidden(model, seqs["r1"][100:300]), **TOL["float32"])
    np.testing.assert_allclose(
        emb.per_base("r1", 150, 160), hidden(model, seqs["r1"][100:300])[50:60], **TOL["float32"]
    )
    assert json.loads(h5py.File(out, "r").attrs["regions"]) == ["chr/2:1-50", "r1:101-300", "r3:11-110"]
    pooled = load_embeddings(
        mamba_dna.embed(run_dir, fasta, tmp_path / "rp.h5", regions="r1:1-200", window=64)
    )
    assert list(pooled.start) == [0, 64, 128, 136] and list(pooled.end) == [64, 128, 192, 200]
    with pytest.raises(UserError, match="no record named"):
        mamba_dna.embed(run_dir, fasta, tmp_path / "bad.h5", regions=["chrX:1-10"])


def test_default_window_comes_from_the_run_directory(tmp_path: Path, run_dir: Path, fasta: Path) -> None:
    emb = load_embeddings(mamba_dna.embed(run_dir, fasta, tmp_path / "d.h5"))
    assert (emb.attrs["window"], emb.attrs["window_source"]) == (DEFAULT_WINDOW, "default")
    assert list(emb.end - emb.start) == list(RECORDS.values())  # each record whole, as one window
    run = tmp_path / "run"
    save_model(load_model(run_dir), run)
    # What `mamba-dna pretrain` writes: the curriculum at the run's root, its end in each checkpoint.
    (run / "curriculum.json").write_text(json.dumps({"min_len": 128, "max_len": 512, "stages": []}))
    step = run / "checkpoints" / "step-0000010"
    step.mkdir(parents=True)
    (step / "task_state.json").write_text(json.dumps({"curriculum_max_len": 256}))
    assert (trained_length(run), trained_length(step), trained_length(tmp_path)) == (512, 256, None)
    emb = load_embeddings(mamba_dna.embed(run, fasta, tmp_path / "t.h5"))
    assert (emb.attrs["window"], emb.attrs["window_source"]) == (512, "trained length")
    assert max(emb.end - emb.start) == 512


def test_in_memory_model_records_the_saved_checksum(
    tmp_path: Path, run_dir: Path, model: MambaLMHeadModel, fasta: Path
) -> None:
    a = load_embeddings(mamba_dna.embed(model, fasta, tmp_path / "a.h5", window=256))
    b = load_embeddings(mamba_dna.embed(run_dir, fasta, tmp_path / "b.h5", window=256))
    assert a.attrs["checkpoint_sha256"] == b.attrs["checkpoint_sha256"]
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    # The public name is the function (its module is mamba_dna.embedding, so nothing shadows it).
    assert mamba_dna.embed.__module__ == "mamba_dna.embedding"


def test_failures_leave_existing_files_alone(tmp_path: Path, run_dir: Path, fasta: Path) -> None:
    out = tmp_path / "e.h5"
    out.write_bytes(b"precious")
    with pytest.raises(UserError, match="exists; use --force"):
        mamba_dna.embed(run_dir, fasta, out)
    with pytest.raises(UserError, match="longer than record 'r3'"):
        mamba_dna.embed(run_dir, fasta, out, window=500, pool="none", force=True)
    with pytest.raises(UserError, match="--stride applies to pooled windows"):
        mamba_dna.embed(run_dir, fasta, out, window=100, stride=50, pool="none", force=True)
    with pytest.raises(UserError, match="--pool must be one of"):
        mamba_dna.embed(run_dir, fasta, out, pool="max", force=True)
    assert out.read_bytes() == b"precious" and not (tmp_path / "e.h5.partial").exists()
    mamba_dna.embed(run_dir, fasta, out, window=256, force=True)
    assert load_embeddings(out).attrs["complete"] is True
    partial = tmp_path / "x.h5.partial"
    partial.write_bytes(b"left over")
    with pytest.raises(UserError, match="use --resume"):
        mamba_dna.embed(run_dir, fasta, tmp_path / "x.h5")
    with pytest.raises(UserError, match="not an HDF5 file"):
        load_embeddings(partial)


def test_an_interrupted_assembly_is_redone_on_resume(
    tmp_path: Path, run_dir: Path, fasta: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed while the HDF5 file is being assembled: resume assembles it again, values unchanged."""
    kw: dict[str, object] = {"window": 100, "pool": "none", "rc_average": True, "batch_size": 2}
    reference = mamba_dna.embed(run_dir, fasta, tmp_path / "ref.h5", **kw)
    out, partial = tmp_path / "e.h5", tmp_path / "e.h5.partial"
    read, tracks_read = RowFiles.read, []

    def interrupt_second_track(self: RowFiles, key: int, row: int, n: int) -> np.ndarray:
        if self.kind == "track":
            tracks_read.append(key)
            if len(tracks_read) == 2:
                raise KeyboardInterrupt
        return read(self, key, row, n)

    monkeypatch.setattr(RowFiles, "read", interrupt_second_track)
    with pytest.raises(KeyboardInterrupt):
        mamba_dna.embed(run_dir, fasta, out, **kw)
    monkeypatch.undo()
    assert not out.exists() and (partial / "embeddings.h5").exists()
    with pytest.raises(UserError, match="incomplete"):
        load_embeddings(partial / "embeddings.h5")

    mamba_dna.embed(run_dir, fasta, out, resume=True, **kw)
    assert not partial.exists()
    got, want = load_embeddings(out), load_embeddings(reference)
    assert got.attrs["resumed"] == 1 and got.tracks == want.tracks and len(got.tracks) == len(RECORDS)
    for name in RECORDS:
        np.testing.assert_array_equal(got.per_base(name), want.per_base(name))


def test_memory_stays_bounded_on_a_megabase_input(tmp_path: Path) -> None:
    """Peak RSS of a 1 Mb per-base run barely exceeds a 20 kb one's, far below n x d_model x 4 bytes."""
    torch.manual_seed(0)
    fast = tmp_path / "fast"  # one small layer: the test measures memory, not the model
    save_model(MambaLMHeadModel(MambaConfig(d_model=32, n_layer=1, d_state=2, expand=1)), fast)
    n = 1_000_000
    small = write_fasta(tmp_path / "small.fa", {"a": random_dna(10_000, 1), "b": random_dna(10_000, 2)})
    big = write_fasta(tmp_path / "big.fa", {"a": random_dna(n // 2, 3), "b": random_dna(n // 2, 4)})
    script = textwrap.dedent(
        f"""
        import resource, mamba_dna
        def peak():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        kw = dict(window=8192, pool="none", batch_size=2)
        mamba_dna.embed({str(fast)!r}, {str(small)!r}, {str(tmp_path / "s.h5")!r}, **kw)
        before = peak()
        mamba_dna.embed({str(fast)!r}, {str(big)!r}, {str(tmp_path / "b.h5")!r}, **kw)
        print(peak() - before)
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    growth = int(res.stdout.strip().splitlines()[-1])
    # Holding the output in memory would take n x d_model x 4 = 128 MB; allocator noise is ~0-20 MB.
    naive = n * 32 * 4
    assert growth < naive / 4, f"peak RSS grew by {growth / 2**20:.1f} MiB for a 1 Mb input"
    with h5py.File(tmp_path / "b.h5", "r") as f:
        assert sum(ds.shape[0] for ds in f["per_base"].values()) == n
