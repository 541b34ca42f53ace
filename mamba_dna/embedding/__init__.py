"""Embeddings of FASTA sequences into HDF5: streamed, resumable, in memory bounded by one batch.

:func:`embed` runs a language model over every record (or region) of one or more FASTA files and writes
its final-normed hidden states to an HDF5 file; :func:`load_embeddings` reads one back. The command
``mamba-dna embed`` is a thin layer over :func:`embed`.

Two kinds of output: *pooled* (:mod:`.pooled`), one vector per window of each record (:mod:`.windows`),
and *per base* (:mod:`.per_base`), one vector per base with the whole record before it as context.
``rc_average=True`` also embeds the reverse complement and averages the two strands. :mod:`.store` holds
the file layout and what makes it crash-safe and resumable; :mod:`.reader` reads it, without torch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from mamba_dna.embedding import store
from mamba_dna.embedding.reader import Embeddings, Track, describe_embeddings, load_embeddings
from mamba_dna.embedding.store import escape_name, unescape_name
from mamba_dna.embedding.windows import DEFAULT_WINDOW, default_window, trained_length, window_offsets
from mamba_dna.errors import UserError

if TYPE_CHECKING:  # torch is imported where the model runs: reading embeddings files does not need it
    import torch

    from mamba_dna.embedding.journal import Journal
    from mamba_dna.embedding.runner import Runner

POOLS = ("mean", "last", "none")
DTYPES = ("float16", "float32")
PRECISIONS = ("fp32", "bf16")
COMPRESSIONS = ("lzf", "gzip", "none")


def embed(
    run_dir_or_model: str | Path | torch.nn.Module,
    fasta_paths: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    window: int | None = None,
    stride: int | None = None,
    regions: Any = None,
    pool: str = "mean",
    rc_average: bool = False,
    dtype: str = "float16",
    batch_size: int = 8,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    compression: str = "lzf",
    resume: bool = False,
    force: bool = False,
    quiet: bool = True,
    command: str | None = None,
) -> Path:
    """Embed the records (or regions) of FASTA files with a Mamba language model into an HDF5 file.

    Args:
        run_dir_or_model: a checkpoint or run directory (ours or mamba_ssm's), or a loaded
            :class:`~mamba_dna.model.MambaLMHeadModel` (moved to ``device`` unless that is ``"auto"``).
        fasta_paths: one FASTA path or several (plain, gzip or bgzip); record names must be unique.
        out: the HDF5 file to write. Its directory must exist; an existing file needs ``force``.
        window: window length (pooled) or piece length (``pool="none"``). Default: the longest window
            the model was trained on, from the run directory's ``curriculum.json`` /
            ``task_state.json``, else 2^16; records shorter than it are embedded whole.
        stride: distance between pooled window starts (default ``window``). Not for ``pool="none"``.
        regions: restrict to regions: a list of :class:`~mamba_dna.datasets.regions.Region` or
            samtools-style strings (``"chr1:1001-2000"``, 1-based inclusive), and/or BED paths (a
            :class:`~pathlib.Path` or a string ending in ``.bed``/``.bed.gz``).
        pool: ``"mean"`` or ``"last"`` (one vector per window) or ``"none"`` (one vector per base).
        rc_average: average with the reverse-complement strand: per base, each base then sees its whole
            left context through one strand and its right context through the other (:mod:`.per_base`);
            pooled, the two strands' window means or last positions are averaged (:mod:`.pooled`).
        dtype: ``"float16"`` or ``"float32"`` for the stored vectors.
        batch_size: windows (pooled) or records streamed side by side (per base) per forward pass.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        precision: ``"fp32"`` (default: the stored float16 is then the only rounding) or ``"bf16"``
            autocast, faster on a GPU.
        compression: ``"lzf"`` (fast; h5py's filter), ``"gzip"`` (readable by every HDF5 tool) or
            ``"none"``.
        resume: continue the ``<out>.partial`` directory left by an interrupted run with the same
            settings (:mod:`.journal`); a finished ``out`` made with the same settings is left as it is.
        force: replace an existing ``out`` (at the final rename only) and discard a stale partial run.
        quiet: no progress bar or notes on stderr.
        command: recorded in the file's ``command`` attribute (the CLI passes its command line).

    Returns:
        The path of the finished file.

    Raises:
        UserError: for anything the caller can fix (paths, options, a mismatched partial file).
    """
    import torch

    from mamba_dna.checkpoint import load_model
    from mamba_dna.embedding import per_base, pooled
    from mamba_dna.embedding.checksum import checkpoint_sha256
    from mamba_dna.embedding.inputs import open_inputs, plan_jobs
    from mamba_dna.embedding.journal import discard, open_journal
    from mamba_dna.embedding.runner import Runner, resolve_device

    if not command:
        target = "<model>" if isinstance(run_dir_or_model, torch.nn.Module) else repr(str(run_dir_or_model))
        command = f"mamba_dna.embed({target}, {fasta_paths!r}, {str(out)!r}, ...)"
    out = Path(out)
    paths = (
        [Path(fasta_paths)] if isinstance(fasta_paths, (str, os.PathLike)) else list(map(Path, fasta_paths))
    )
    if not paths:
        raise UserError("no FASTA files given")
    _check_options(pool, dtype, precision, compression, batch_size, window, stride)
    store.check_output(out, resume=resume, force=force)
    for p in paths:
        if not p.is_file():
            raise UserError(f"{p}: no such FASTA file")

    dev = resolve_device(device)
    if isinstance(run_dir_or_model, torch.nn.Module):
        model, run_dir, checkpoint = run_dir_or_model, None, "<in-memory model>"
        if str(device) != "auto":
            model.to(dev)
        dev = next(model.parameters()).device
    else:
        run_dir = Path(run_dir_or_model)
        model, checkpoint = load_model(run_dir, device=dev), str(run_dir.resolve())
    sha256 = checkpoint_sha256(model, run_dir)
    L, window_source = (int(window), "--window") if window is not None else default_window(run_dir)
    output = per_base if pool == "none" else pooled

    with contextlib.ExitStack() as stack:
        fastas = open_inputs(paths, stack)
        jobs, notes = plan_jobs(paths, fastas, regions)
        if output is per_base:
            per_base.check_jobs(jobs, L if window is not None else None)
        run = Runner(
            model=model,
            device=dev,
            fastas=fastas,
            jobs=jobs,
            window=L,
            stride=L if stride is None else int(stride),
            pool=pool,
            rc_average=bool(rc_average),
            dtype=np.dtype(dtype),
            batch_size=int(batch_size),
            precision=precision,
            compression=compression,
            quiet=quiet,
        )
        for note in notes:
            run.note(note)
        attrs = store.attributes(run, paths, checkpoint, sha256, window_source, command)
        partial = store.partial_path(out)
        if resume and not force and out.exists():
            if not store.finished_with(out, attrs["settings"]):
                raise UserError(f"{out} exists; use --force to replace it")
            # Killed between the final rename and the clean-up, or simply run twice: nothing left to do.
            discard(partial)
            run.note(f"{out} is already complete")
            return out
        if resume and not partial.exists():
            run.note(f"no {partial} to resume; starting from the beginning")
        with open_journal(partial, attrs, resume=resume and partial.exists()) as journal:
            try:
                path = _execute(run, journal, output)
            except UserError:
                raise
            except BaseException:  # the journal is kept on purpose: say how to pick it up
                run.note(f"partial output kept in {partial}; rerun with --resume to continue")
                raise
            store.publish(path, out)
        shutil.rmtree(partial, ignore_errors=True)
    return out


def _execute(run: Runner, journal: Journal, output: ModuleType) -> Path:
    """Compute what the journal does not hold yet, then assemble the HDF5 file; progress bars for both."""
    from mamba_dna.progress import progress_bar

    with progress_bar(run.quiet, unit="bases") as progress:
        run.progress, run.started = progress, time.perf_counter()
        run.task = progress.add_task("embedding", total=output.total_bases(run), info="")
        prog = journal.load_progress()
        if prog is not None:
            done = output.bases_done(run, prog)
            run.note(f"resuming {journal.directory} at {done:,} of {output.total_bases(run):,} bases")
            progress.update(run.task, completed=done)
        output.embed(run, journal)
        run.task = progress.add_task("writing HDF5", total=output.total_rows(run), info="")
        return store.assemble(run, journal, output)


def _check_options(
    pool: str,
    dtype: str,
    precision: str,
    compression: str,
    batch_size: int,
    window: int | None,
    stride: int | None,
) -> None:
    for value, choices, flag in (
        (pool, POOLS, "--pool"),
        (dtype, DTYPES, "--dtype"),
        (precision, PRECISIONS, "--precision"),
        (compression, COMPRESSIONS, "--compression"),
    ):
        if value not in choices:
            raise UserError(f"{flag} must be one of {', '.join(choices)}, not {value!r}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {batch_size}")
    if window is not None and window < 1:
        raise UserError(f"--window must be at least 1, not {window}")
    if stride is not None and stride < 1:
        raise UserError(f"--stride must be at least 1, not {stride}")
    if pool == "none" and stride is not None and stride != window:
        raise UserError(
            "--stride applies to pooled windows only: with --pool none every base is embedded once, with "
            "all of its left context (the state is carried from piece to piece)"
        )


__all__ = [
    "DEFAULT_WINDOW",
    "Embeddings",
    "Track",
    "describe_embeddings",
    "embed",
    "escape_name",
    "load_embeddings",
    "trained_length",
    "unescape_name",
    "window_offsets",
]
