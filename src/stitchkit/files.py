"""Writing files so that a kill at any moment leaves either the old file or the new one, never half of one, and
recognising what such a kill leaves behind.

* :func:`atomic_write_bytes` writes a temporary ``.NAME.PID@HOST.XXXXXXXX.tmp`` beside ``NAME``, fsyncs it, renames
  it over ``NAME`` and fsyncs the folder. A kill before the rename leaves the temporary file:
  :func:`stitchkit.temps.is_own_temp` knows it by its name, and :func:`stitchkit.temps.remove_own_temps` deletes it
  once its writer is gone (never what a live process is writing).
* :func:`append_line` appends one JSON line (metrics, attempts) with one write; a kill in the middle leaves a torn
  last line without its newline, which :func:`cut_torn_tail` removes before the next append.

Every write passes the fault points ``write:NAME`` and ``renamed:NAME``, every append ``append:NAME``
(:mod:`stitchkit.faults`), and the tests kill the process at each of them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import faults
from .temps import make_temp_file


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename, fsync of the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp_file(path)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; runs are meant to be read by others too
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        faults.point(f"write:{path.name}")
        if path.name == "last.pt":
            faults.point("checkpoint-write")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    faults.point(f"renamed:{path.name}")
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    """A JSON file's contents, or None when it is missing or unreadable (torn by a kill, not JSON): for records a
    rerun writes again, where absent and broken mean the same."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline in one write, synced. A torn earlier tail is cut first."""
    path = Path(path)
    cut_torn_tail(path)
    data = (line + "\n").encode()
    with open(path, "ab") as f:
        if faults.fires_next(f"append:{path.name}"):
            f.write(data[: len(data) // 2])  # what a kill in the middle of the write leaves
            f.flush()
            os.fsync(f.fileno())
        faults.point(f"append:{path.name}")
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def cut_torn_tail(path: Path) -> bool:
    """Remove a last line without its newline (a write cut short by a kill); True when there was one."""
    try:
        with open(path, "rb+") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size == 0:
                return False
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return False
            f.seek(0)
            data = f.read()
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())
            return True
    except FileNotFoundError:
        return False


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
