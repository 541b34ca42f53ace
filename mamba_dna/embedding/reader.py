"""Reading an embeddings file back: :func:`load_embeddings`, and :func:`describe_embeddings` for ``info``.

Needs h5py and numpy only: no torch, so reading is quick to start and works without a GPU stack.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mamba_dna.embedding.store import FORMAT
from mamba_dna.errors import UserError

_JSON_ATTRS = ("model_config", "tokenizer", "input_fasta", "regions", "settings")


@dataclass(frozen=True)
class Track:
    """One per-base track: ``record[start:end]`` (0-based, half-open) in dataset ``/per_base/<key>``."""

    record: str
    start: int
    end: int
    key: str

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass
class Embeddings:
    """An embeddings file, read by :func:`load_embeddings`.

    Pooled files: ``embeddings`` (n, d_model), ``record`` (n, str), ``start``/``end`` (n, int64) are
    numpy arrays held in memory. Per-base files: ``tracks`` lists the tracks and :meth:`per_base` reads
    one by coordinate slice from disk (the pooled arrays are then empty).
    """

    path: Path
    attrs: dict[str, Any]
    embeddings: np.ndarray
    record: np.ndarray
    start: np.ndarray
    end: np.ndarray
    tracks: list[Track]

    @property
    def d_model(self) -> int:
        return int(self.attrs["model_config"]["d_model"])

    @property
    def pool(self) -> str:
        return str(self.attrs["pool"])

    def __len__(self) -> int:
        return len(self.embeddings)

    def per_base(self, record: str, start: int | None = None, end: int | None = None) -> np.ndarray:
        """Per-base vectors (end - start, d_model) of ``record[start:end]`` (0-based, half-open).

        ``start``/``end`` default to the track's extent; the slice must lie inside one track (the whole
        record, or one of the regions that were embedded). Only the chunks covering it are read.
        """
        candidates = [t for t in self.tracks if t.record == record]
        if not candidates:
            raise UserError(f"{self.path}: no per-base track for record {record!r}")
        for t in candidates:
            s = t.start if start is None else start
            e = t.end if end is None else end
            if t.start <= s <= e <= t.end:
                with h5py.File(self.path, "r") as f:
                    return f["per_base"][t.key][s - t.start : e - t.start]
        spans = ", ".join(f"{t.start}-{t.end}" for t in candidates)
        raise UserError(f"{self.path}: {record}[{start}:{end}] is not inside one track ({spans})")


def load_embeddings(path: str | Path) -> Embeddings:
    """Read an embeddings file written by :func:`embed` (only finished files: not ``.partial`` ones)."""
    path = Path(path)
    with _open(path) as f:
        attrs = _decode_attrs(f.attrs)
        if attrs.get("format") != FORMAT:
            raise UserError(f"{path}: not a mamba-dna embeddings file")
        if not attrs.get("complete"):
            raise UserError(f"{path}: incomplete (an interrupted run); resume it with --resume")
        d = int(attrs["model_config"]["d_model"])
        if "embeddings" in f:
            emb = f["embeddings"][()]
            rec = np.array(f["record"].asstr()[()], dtype=object)
            start, end = f["start"][()], f["end"][()]
        else:
            emb = np.zeros((0, d), dtype=np.dtype(attrs["dtype"]))
            rec, start, end = np.array([], dtype=object), np.zeros(0, np.int64), np.zeros(0, np.int64)
        tracks = [_track(key, ds) for key, ds in f.get("per_base", {}).items()]
    return Embeddings(path, attrs, emb, rec, start, end, tracks)


def describe_embeddings(path: str | Path) -> dict[str, Any]:
    """What ``mamba-dna info`` shows for an embeddings file: attributes and dataset shapes (JSON-ready).

    Works on a ``.partial`` file too (then ``complete`` is False and the progress is shown).
    """
    path = Path(path)
    with _open(path) as f:
        attrs = _decode_attrs(f.attrs)
        if attrs.get("format") != FORMAT:
            raise UserError(f"{path}: not a mamba-dna embeddings file (no format attribute {FORMAT!r})")
        datasets: list[dict[str, Any]] = []

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and not name.startswith("per_base/"):
                datasets.append(_dataset_info(name, obj))

        f.visititems(visit)
        tracks = []
        for key, ds in f.get("per_base", {}).items():
            t = _track(key, ds)
            tracks.append(
                {**_dataset_info(f"per_base/{key}", ds), "record": t.record, "start": t.start, "end": t.end}
            )
    info: dict[str, Any] = {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "complete": bool(attrs.get("complete")),
        "attributes": attrs,
        "datasets": datasets,
    }
    if attrs.get("pool") == "none":
        info["per_base"] = {
            "tracks": len(tracks),
            "bases": sum(t["shape"][0] for t in tracks),
            "items": tracks,
        }
    return info


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise UserError(f"{path}: not an HDF5 file ({e})") from None


def _decode_attrs(attrs: h5py.AttributeManager) -> dict[str, Any]:
    """Attributes as plain Python values, with the JSON ones parsed."""
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, np.generic):
            v = v.item()
        if k in _JSON_ATTRS and isinstance(v, str):
            with contextlib.suppress(json.JSONDecodeError):
                v = json.loads(v)
        out[k] = v
    return out


def _track(key: str, ds: h5py.Dataset) -> Track:
    return Track(str(ds.attrs["record"]), int(ds.attrs["start"]), int(ds.attrs["end"]), key)


def _dataset_info(name: str, ds: h5py.Dataset) -> dict[str, Any]:
    dtype = "utf-8 string" if h5py.check_string_dtype(ds.dtype) else str(ds.dtype)
    return {
        "name": "/" + name,
        "shape": list(ds.shape),
        "dtype": dtype,
        "chunks": list(ds.chunks) if ds.chunks else None,
        "compression": ds.compression,
    }
