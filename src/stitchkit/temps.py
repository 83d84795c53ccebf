"""Temporary files and folders that name their writer, and the removal of those whose writer is gone.

Whatever stitchkit writes whole (a file, a model folder, an export) it first writes under a temporary name beside
its target and renames at the end; a kill before the rename leaves the temporary one. Its name,
``.TARGET.PID@HOST.XXXXXXXX.tmp``, says which process wrote it, so that :func:`remove_own_temps` removes only those
whose writer is gone, and never what a live process is still writing (another export into the same parent folder,
another sweep process writing the same manifest): an earlier rule, "older than the process that cleans", removed a
live export's half-written folder.

A writer counts as gone when its PID is no live process of this machine, or when the process that has its PID now
started after the temporary was last changed (the PID was reused: a writer starts before it writes). Processes of
another machine (a runs folder on a shared file system) cannot be asked, nor can the writers of the older names
``.TARGET.XXXXXXXX.tmp`` (no PID): theirs count as left over once unchanged for :data:`UNKNOWN_WRITER_AGE`.

Assumed: a host name names one PID space (containers that share a host name share its processes too).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

# tempfile's random part: 8 of [a-z0-9_]. The writer's part comes first; a name without one is the older naming.
_TEMP = re.compile(r"^\.(?P<target>.+)\.(?P<pid>[0-9]+)@(?P<host>[A-Za-z0-9-]+)\.[a-z0-9_]{8}\.tmp$")
_UNNAMED_TEMP = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp$")
# No writer leaves its temporary unchanged this long (the longest step, an export's ONNX conversion of a large model,
# takes minutes); past it, a temporary whose writer cannot be asked about is a leftover.
UNKNOWN_WRITER_AGE = 3600.0
# /proc gives a start time to the clock tick and the boot time to the second, and the wall clock may be set between
# the write and now: a process started less than this after the last change might still be its writer.
_START_SLACK = 60.0


def _host_name() -> str:
    """This machine's name as it appears in temporary names: letters, digits and dashes, at most 32 characters (a
    longer one keeps its start and a hash of the whole, so two machines keep two names)."""
    name = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
    if len(name) > 32:
        name = f"{name[:23]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


HOST = _host_name()


# The longest name most file systems take (NAME_MAX, in bytes), and what tempfile adds after the prefix (8 random
# characters and the ".tmp" suffix).
_NAME_MAX = 255
_RANDOM_AND_SUFFIX = 8 + len(".tmp")


def temp_prefix(target: Path) -> str:
    """The start of a temporary name for ``target``, naming the process that asks (asked at each call: a forked
    process has a PID of its own).

    A target whose name is near the file system's limit gets a shortened one here (its start, ``~`` and a hash of the
    whole): the writer's part and the random part add up to about 60 bytes, and a temporary that cannot be created
    would make a name the target itself may have unwritable. Nothing reads the target back out of a temporary's
    name; the writer's part is what the cleaners need, so that is never shortened."""
    name = Path(target).name
    writer = f".{os.getpid()}@{HOST}."
    room = _NAME_MAX - len(".") - len(writer) - _RANDOM_AND_SUFFIX
    if len(os.fsencode(name)) > room:
        digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:8]
        keep = name
        while len(os.fsencode(keep)) > room - len(digest) - 1:  # by characters: never half of a multi-byte one
            keep = keep[:-1]
        name = f"{keep}~{digest}"
    return f".{name}{writer}"


def make_temp_file(target: Path) -> tuple[int, str]:
    """``tempfile.mkstemp`` beside ``target``, named for this process: ``(file descriptor, path)``."""
    return tempfile.mkstemp(prefix=temp_prefix(target), suffix=".tmp", dir=Path(target).parent)


def make_temp_dir(target: Path) -> Path:
    """``tempfile.mkdtemp`` beside ``target``, named for this process, where a folder is assembled before it is
    renamed to ``target``."""
    return Path(tempfile.mkdtemp(prefix=temp_prefix(target), suffix=".tmp", dir=Path(target).parent))


def is_own_temp(path: Path) -> bool:
    """Whether ``path`` is a temporary of stitchkit's writers (either naming)."""
    name = Path(path).name
    return _TEMP.match(name) is not None or _UNNAMED_TEMP.match(name) is not None


def remove_own_temps(folder: Path) -> list[str]:
    """Delete the temporaries in ``folder`` whose writer is gone (see the module's docstring); returns their names.
    Never raises: one that cannot be removed (or is removed by another process first) is left and not named."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:  # no such folder, or one that cannot be read: nothing to clean there
        return removed
    for entry in entries:
        if not is_own_temp(entry):
            continue
        try:
            if _writer_may_be_alive(entry):
                continue
            if entry.is_dir() and not entry.is_symlink():  # a folder being assembled (a model folder, an export)
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:  # gone already, or not removable here (permissions, a busy file system): left as it is
            continue
        removed.append(entry.name)
    return removed


def _writer_may_be_alive(path: Path) -> bool:
    changed = _last_change(path)
    named = _TEMP.match(path.name)
    if named is None or named["host"] != HOST:
        return time.time() - changed < UNKNOWN_WRITER_AGE
    pid = int(named["pid"])
    if pid == os.getpid():  # this process may be writing it; one its PID's earlier owner left waits for a later cleaner
        return True
    if not _is_running(pid):
        return False
    started = _start_time(pid)
    # Unknown (no /proc here, or the process just ended): it may be the writer.
    return started is None or started <= changed + _START_SLACK


def _last_change(path: Path) -> float:
    """The newest modification time in ``path`` (a folder's files included: a writer adds to them)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
                except OSError:  # removed while walking
                    continue
    return newest


def _is_running(pid: int) -> bool:
    """Whether ``pid`` is a process of this machine that has not ended (a zombie has: it only waits to be reaped)."""
    if pid <= 0:  # not a process (kill(0) would ask this process group)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    except (OverflowError, OSError):  # not a valid PID
        return False
    stat = _proc_stat(pid)
    return stat is None or stat[0] != "Z"


def _start_time(pid: int) -> float | None:
    """When ``pid`` started, in seconds since the epoch, from /proc (Linux); None where that cannot be read."""
    stat = _proc_stat(pid)
    if stat is None:
        return None
    try:
        with open("/proc/stat") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith("btime "))
        ticks = int(stat[19])  # field 22 of /proc/PID/stat: the 20th after the command's name
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command's name (which may hold spaces and parentheses), state first."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()
