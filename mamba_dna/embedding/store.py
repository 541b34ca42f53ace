"""The HDF5 file (``h5py``): its attributes, its names, and writing it so that a crash loses nothing finished.

Layout. Pooled: ``/embeddings`` (n_windows, d_model), ``/record`` (n_windows, UTF-8 strings), ``/start``
and ``/end`` (int64, 0-based half-open record coordinates). Per base: ``/per_base/<key>`` (length,
d_model) for each record, where ``<key>`` is the record name escaped by :func:`escape_name`, followed by
``:<start+1>-<end>`` for a region (samtools style); each such dataset carries ``record``, ``start`` and
``end`` attributes, so a track is read by coordinate slice. Every dataset is chunked, compressed (lzf by
default) and resizable, and written once every row is computed (see below).

File attributes: ``format``, ``mamba_dna_version``, ``model_config`` (JSON), ``checkpoint`` and
``checkpoint_sha256`` (of ``model.safetensors`` or ``pytorch_model.bin``), ``window``, ``window_source``,
``stride``, ``pool``, ``dtype``, ``precision``, ``rc_average``, ``tokenizer`` (JSON vocabulary),
``command``, ``created`` and ``completed`` (UTC ISO 8601), ``input_fasta`` (JSON list of paths),
``regions`` (JSON list), ``complete`` (True once finished) and ``settings`` (JSON: what ``resume`` checks).

Crash safety and resume. An unfinished run keeps its work in the directory ``<out>.partial`` (see
:mod:`.journal`), not in an HDF5 file, because HDF5 is not crash-consistent while open for writing. The
file is assembled there once every row is computed and renamed onto ``out``, so an interrupted run never
leaves a file that looks finished, and ``force`` replaces an existing ``out`` only at that rename.
``resume=True`` checks that the settings and the checkpoint's sha256 are those the partial run started
with and continues from its last recorded batch, giving the same values as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import h5py

from mamba_dna import __version__
from mamba_dna.errors import UserError
from mamba_dna.tokenizer import VOCAB

if TYPE_CHECKING:
    from mamba_dna.embedding.journal import Journal
    from mamba_dna.embedding.runner import Runner

FORMAT = "mamba-dna-embeddings/1"
PARTIAL_SUFFIX = ".partial"
# Target bytes per HDF5 chunk: large enough for compression and few index entries, small enough that a
# short coordinate slice of a per-base track does not decompress megabytes.
_CHUNK_BYTES = 1 << 19


def escape_name(name: str) -> str:
    """The HDF5 link name of a record: ``%`` -> ``%25``, ``/`` -> ``%2F``, and a name of dots only escaped.

    HDF5 splits paths at ``/`` and gives ``.`` a meaning, so these cannot appear raw in a link name;
    escaping ``%`` first keeps the mapping reversible (:func:`unescape_name`).
    """
    key = name.replace("%", "%25").replace("/", "%2F")
    if key and set(key) == {"."}:
        key = key.replace(".", "%2E")
    return key


def unescape_name(key: str) -> str:
    """Inverse of :func:`escape_name`."""
    return key.replace("%2F", "/").replace("%2E", ".").replace("%25", "%")


def chunk_rows(d_model: int, itemsize: int, rows: int) -> int:
    """Rows per chunk of a (rows, d_model) dataset."""
    return max(1, min(rows, max(256, _CHUNK_BYTES // (d_model * itemsize))))


def compression_args(compression: str) -> dict[str, Any]:
    return {} if compression == "none" else {"compression": compression}


def utcnow() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + PARTIAL_SUFFIX)


def check_output(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse, before any work, an output that cannot be written or would overwrite something."""
    if out.is_dir():
        raise UserError(f"{out}: is a directory; give a file name for the embeddings")
    if not out.parent.is_dir():
        raise UserError(f"{out}: output directory {out.parent} does not exist")
    if out.exists() and not (force or resume):  # resume: finished_with decides once settings are known
        raise UserError(f"{out} exists; use --force to replace it")
    partial = partial_path(out)
    if partial.exists() and not (resume or force):
        raise UserError(f"{partial} is left from an interrupted run; use --resume to continue it or --force")


def attributes(
    run: Runner, paths: Sequence[Path], checkpoint: str, sha256: str, window_source: str, command: str
) -> dict[str, Any]:
    """The file attributes of a new file; those in ``settings`` must match for a resume."""
    same = {
        "format": FORMAT,
        "checkpoint_sha256": sha256,
        "window": run.window,
        "stride": run.stride,
        "pool": run.pool,
        "rc_average": run.rc_average,
        "dtype": run.dtype.name,
        "precision": run.precision,
        "batch_size": run.batch_size,
        "compression": run.compression,
    }
    jobs = [[j.fasta, j.record, j.start, j.end, j.is_region] for j in run.jobs]
    settings = {
        **same,
        "input_fasta": [{"path": str(p.resolve()), "bytes": p.stat().st_size} for p in paths],
        "jobs_sha256": hashlib.sha256(json.dumps(jobs).encode()).hexdigest(),
    }
    return {
        **same,
        "mamba_dna_version": __version__,
        "model_config": json.dumps(run.model.config.to_dict()),
        "checkpoint": checkpoint,
        "window_source": window_source,
        "tokenizer": json.dumps(list(VOCAB)),
        "command": command,
        "created": utcnow(),
        "input_fasta": json.dumps([str(p.resolve()) for p in paths]),
        "regions": json.dumps(sorted({j.key for j in run.jobs if j.is_region})),
        "settings": json.dumps(settings, sort_keys=True),
        "complete": False,
    }


def finished_with(out: Path, settings: str) -> bool:
    """Whether ``out`` is a complete embeddings file made with these ``settings``."""
    try:
        with h5py.File(out, "r") as f:
            return bool(f.attrs.get("complete")) and f.attrs.get("settings") == settings
    except OSError:
        return False


def assemble(run: Runner, journal: Journal, output: ModuleType) -> Path:
    """Build the HDF5 file from the journal's rows, inside the journal, and return its path.

    ``output`` is :mod:`.pooled` or :mod:`.per_base`; its ``assemble`` creates and fills the datasets.
    An assembly cut short by a kill is simply redone.
    """
    path = journal.h5_path
    path.unlink(missing_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs.update(journal.attrs)
        output.assemble(run, journal, f)
        f.attrs["complete"] = True
        f.attrs["completed"] = utcnow()
    return path


def publish(path: Path, out: Path) -> None:
    """Durably rename the finished file onto ``out``."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(path, out)
    # The rename is durable only once the directory entry is; not every platform can open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
