"""Pooled output (``pool="mean"`` or ``"last"``): one vector of ``d_model`` per window, in input order.

Each window (see :mod:`.windows`) gives the mean of its bases' hidden states, or the hidden state of its
last base, which has seen the whole window. Windows are computed independently, with no context from
outside the window, ``batch_size`` at a time; with ``rc_average`` each window's reverse complement goes
in the same batch, and the two strands' means (or last positions) are averaged.

While running, the vectors go to one row file of the journal (:mod:`.journal`) and the progress is the
number of rows written; the windows' coordinates follow from the settings, so only the vectors are kept.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator

import h5py
import numpy as np
import torch

from mamba_dna.embedding.inputs import Job
from mamba_dna.embedding.journal import Journal, Progress, RowFiles
from mamba_dna.embedding.runner import Pipeline, Runner
from mamba_dna.embedding.store import chunk_rows, compression_args
from mamba_dna.embedding.windows import Tiling
from mamba_dna.tokenizer import reverse_complement


def _tilings(run: Runner) -> list[Tiling]:
    return [Tiling(j.length, run.window, run.stride) for j in run.jobs]


def total_bases(run: Runner) -> int:
    return run.passes * sum(t.count * t.size for t in _tilings(run))


def total_rows(run: Runner) -> int:
    return sum(t.count for t in _tilings(run))


def _rows_done(prog: Progress | None) -> int:
    return 0 if prog is None else int(prog["rows"])


def bases_done(run: Runner, prog: Progress | None) -> int:
    """Bases covered by the rows a resumed run already holds."""
    done, rows = 0, _rows_done(prog)
    for t in _tilings(run):
        take = min(rows, t.count)
        done, rows = done + take * t.size, rows - take
    return run.passes * done


def _windows(run: Runner) -> Iterator[tuple[Job, int, int]]:
    for job, tiling in zip(run.jobs, _tilings(run), strict=True):
        for s, e in tiling:
            yield job, s, e


def _vectors(run: Runner, journal: Journal) -> RowFiles:
    return journal.rows("pooled", run.dtype, run.d_model)


def embed(run: Runner, journal: Journal) -> None:
    vectors = _vectors(run, journal)
    out_dtype = torch.float16 if run.dtype == np.float16 else torch.float32
    pipe = Pipeline(run.device)

    def write(lo: int, rows: np.ndarray) -> None:
        vectors.write(0, lo, rows)
        journal.save_progress(rows=np.int64(lo + len(rows)))

    lo = _rows_done(journal.load_progress())
    windows = itertools.islice(_windows(run), lo, None)
    while batch := list(itertools.islice(windows, run.batch_size)):
        pieces = [run.tokens(job, s, e) for job, s, e in batch]
        lengths = [e - s for _, s, e in batch]
        if run.rc_average:
            pieces += [np.ascontiguousarray(reverse_complement(p)) for p in pieces]
            lengths += lengths
        vec = pool(run.hidden(run.batch_ids(pieces)), lengths, run.pool)
        if run.rc_average:
            vec = (vec[: len(batch)] + vec[len(batch) :]) / 2
        pipe.submit(functools.partial(write, lo), [vec.to(out_dtype)])
        run.advance(sum(lengths))
        lo += len(batch)
    pipe.drain()


def assemble(run: Runner, journal: Journal, f: h5py.File) -> None:
    """``/embeddings``, ``/record``, ``/start``, ``/end`` from the row file and the windows, in blocks."""
    n, d, comp = total_rows(run), run.d_model, compression_args(run.compression)
    rows = chunk_rows(d, run.dtype.itemsize, 1 << 30)
    emb = f.create_dataset(
        "embeddings", (n, d), maxshape=(None, d), dtype=run.dtype, chunks=(rows, d), **comp
    )
    text = h5py.string_dtype("utf-8")
    rec = f.create_dataset("record", (n,), maxshape=(None,), dtype=text, chunks=(4096,), **comp)
    st, en = (
        f.create_dataset(name, (n,), maxshape=(None,), dtype=np.int64, chunks=(8192,), **comp)
        for name in ("start", "end")
    )
    vectors, windows = _vectors(run, journal), _windows(run)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        batch = list(itertools.islice(windows, hi - lo))
        emb[lo:hi] = vectors.read(0, lo, hi - lo)
        rec[lo:hi] = [job.record for job, _, _ in batch]
        st[lo:hi] = [job.start + s for job, s, _ in batch]
        en[lo:hi] = [job.start + e for job, _, e in batch]
        run.advance_rows(hi - lo)


def pool(h: torch.Tensor, lengths: list[int], how: str) -> torch.Tensor:
    """(b, l, d) hidden states -> (b, d) float32: mean over each row's bases, or its last base."""
    lens = torch.tensor(lengths, device=h.device)
    if how == "last":
        return h[torch.arange(h.shape[0], device=h.device), lens - 1].float()
    if min(lengths) == h.shape[1]:
        return h.float().mean(dim=1)
    mask = (torch.arange(h.shape[1], device=h.device)[None, :] < lens[:, None]).unsqueeze(-1)
    return (h.float() * mask).sum(dim=1) / lens[:, None]
