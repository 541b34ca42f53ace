"""The run in progress, ``<out>.partial/``: raw rows and progress on disk, safe against a kill at any point.

An HDF5 file is not crash-consistent while it is open for writing: a process killed in the middle of
``flush()`` can leave a compressed chunk rewritten in place but its index not, or one dataset's new
chunk on disk beside another's old one, and the next open reads garbage or fails. So the HDF5 file is
not where an unfinished run keeps its work. Rows go into plain files at fixed offsets (a redone batch
rewrites the same bytes), the progress into ``progress.npz``, replaced whole (write a temporary file,
then rename) after the rows it covers have been written; only a finished run assembles the HDF5 file,
inside the directory, and renames it onto the output. A kill while assembling costs only the assembly.

Contents: ``settings.json`` (the file attributes the run started with; a resume must match its
``settings``), ``progress.npz``, ``<kind>-<key>.bin`` row files (:class:`RowFiles`), ``lock`` (an
advisory lock held while a process works here) and, at the end, ``embeddings.h5``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mamba_dna.atomic import atomic_open, write_json
from mamba_dna.errors import UserError

Progress = dict[str, np.ndarray]


class RowFiles:
    """Rows of ``d`` values of one dtype in one raw file per key, written with pwrite, read with pread."""

    def __init__(self, directory: Path, kind: str, dtype: np.dtype, d: int) -> None:
        self.directory, self.kind, self.dtype = directory, kind, np.dtype(dtype)
        self.row_bytes = d * self.dtype.itemsize
        self.fds: dict[int, int] = {}

    def path(self, key: int) -> Path:
        return self.directory / f"{self.kind}-{key}.bin"

    def _fd(self, key: int) -> int:
        if key not in self.fds:
            self.fds[key] = os.open(self.path(key), os.O_RDWR | os.O_CREAT, 0o644)
        return self.fds[key]

    def write(self, key: int, row: int, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows, dtype=self.dtype).tobytes()
        if os.pwrite(self._fd(key), data, row * self.row_bytes) != len(data):
            raise OSError(f"short write to {self.path(key)} (disk full?)")

    def read(self, key: int, row: int, n: int) -> np.ndarray:
        data = os.pread(self._fd(key), n * self.row_bytes, row * self.row_bytes)
        if len(data) != n * self.row_bytes:
            raise UserError(
                f"{self.path(key)} is shorter than its recorded progress; the partial run is damaged, "
                "use --force to start over"
            )
        return np.frombuffer(data, dtype=self.dtype).reshape(n, -1)

    def remove(self, key: int) -> None:
        fd = self.fds.pop(key, None)
        if fd is not None:
            os.close(fd)
        self.path(key).unlink(missing_ok=True)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


class Journal:
    """An open ``<out>.partial/`` directory, locked by this process."""

    def __init__(self, directory: Path, attrs: dict[str, Any], lock_fd: int) -> None:
        self.directory, self.attrs, self._lock_fd = directory, attrs, lock_fd
        self._files: list[RowFiles] = []

    @property
    def h5_path(self) -> Path:
        return self.directory / "embeddings.h5"

    def rows(self, kind: str, dtype: np.dtype, d: int) -> RowFiles:
        files = RowFiles(self.directory, kind, dtype, d)
        self._files.append(files)
        return files

    def load_progress(self) -> Progress | None:
        """The last recorded progress, or None when no batch was recorded yet."""
        path = self.directory / "progress.npz"
        if not path.exists():
            return None
        with np.load(path) as npz:  # arrays only: allow_pickle stays off
            return {name: npz[name] for name in npz.files}

    def save_progress(self, **arrays: Any) -> None:
        """Record progress; call it only once every row it covers has been written."""
        with atomic_open(self.directory / "progress.npz", "wb") as fh:
            np.savez(fh, **arrays)

    def close(self) -> None:
        for files in self._files:
            files.close()
        os.close(self._lock_fd)


def _lock(directory: Path) -> int:
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"{directory}: in use by another process") from None
    return fd


def discard(directory: Path) -> None:
    """Remove a journal (or whatever stands at its path), unless a live process holds its lock."""
    if directory.is_dir() and not directory.is_symlink():
        lock_fd = _lock(directory)  # never delete a live run's files
        try:
            shutil.rmtree(directory)
        finally:
            os.close(lock_fd)
    elif directory.exists() or directory.is_symlink():
        directory.unlink()


@contextlib.contextmanager
def open_journal(directory: Path, attrs: dict[str, Any], *, resume: bool) -> Iterator[Journal]:
    """A fresh ``<out>.partial/`` (any old one discarded), or the existing one when ``resume``.

    A resumed journal keeps the attributes it started with (its ``created`` time among them) but takes
    the new ``command`` and counts the resume.
    """
    if not resume:
        discard(directory)
        directory.mkdir()
        lock_fd = _lock(directory)
        write_json(directory / "settings.json", attrs)
    else:
        if not (directory / "settings.json").is_file():
            raise UserError(f"{directory}: not a partial embedding run; use --force to start over")
        lock_fd = _lock(directory)
        try:
            old_attrs = json.loads((directory / "settings.json").read_text())
            old, new = json.loads(old_attrs.get("settings", "{}")), json.loads(attrs["settings"])
            if old != new:
                differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise UserError(
                    f"{directory}: cannot resume, it was started with different {', '.join(differ)}; "
                    "rerun with the same arguments, or use --force to start over"
                )
            attrs = {
                **old_attrs,
                "command": attrs["command"],
                "resumed": int(old_attrs.get("resumed", 0)) + 1,
            }
            write_json(directory / "settings.json", attrs)
        except BaseException:
            os.close(lock_fd)
            raise
    journal = Journal(directory, attrs, lock_fd)
    try:
        yield journal
    finally:
        journal.close()
