"""Temporary files and folders name their writer: a cleaner removes those whose writer is gone and never touches
what a live process is writing, whatever their age; cleaning never raises."""
import ast
import errno
import os
import re
import subprocess
import sys
from pathlib import Path

from stitchkit import temps
from stitchkit.files import atomic_write_text
from stitchkit.temps import HOST, is_own_temp, make_temp_dir, remove_own_temps

SRC = Path(__file__).resolve().parents[1] / "src"
LONG_AGO = 1e9  # 2001: written long before any process of this test started


def _temp_file(folder: Path, target: str, writer: str) -> Path:
    path = folder / f".{target}.{writer}.abcd_123.tmp"
    path.write_text("half")
    return path


def _temp_folder(folder: Path, target: str, writer: str) -> Path:
    """What an export or a model folder being assembled looks like."""
    path = folder / f".{target}.{writer}.k2j3ab_z.tmp"
    (path / "model").mkdir(parents=True)
    (path / "model" / "config.json").write_text("{}")
    (path / "model.onnx").write_bytes(b"onnx")
    return path


def _set_changed(path: Path, when: float) -> None:
    for each in [*path.rglob("*"), path]:
        os.utime(each, (when, when))


def _clean_in_a_new_process(folder: Path) -> list[str]:
    """remove_own_temps as another stitchkit command calls it: in a process started after the temporaries were
    written (an earlier rule took everything older than the cleaning process for a leftover)."""
    code = "import sys; from stitchkit.temps import remove_own_temps; print(remove_own_temps(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.returncode == 0, done.stderr[-2000:]
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


def test_a_live_writers_temporaries_survive_a_cleaner_started_after_them(tmp_path, live_pid):
    file = _temp_file(tmp_path, "result.json", f"{live_pid}@{HOST}")
    folder = _temp_folder(tmp_path, "A", f"{live_pid}@{HOST}")
    assert _clean_in_a_new_process(tmp_path) == []
    assert file.read_text() == "half" and (folder / "model" / "config.json").is_file()
    assert (folder / "model.onnx").is_file()


def test_a_gone_writers_temporaries_are_removed_whatever_their_age(tmp_path, gone_pid):
    file = _temp_file(tmp_path, "last.pt", f"{gone_pid}@{HOST}")  # written just now, by a process now gone
    folder = _temp_folder(tmp_path, "A", f"{gone_pid}@{HOST}")
    (tmp_path / "notes.txt").write_text("the user's")
    assert sorted(remove_own_temps(tmp_path)) == sorted([file.name, folder.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_temporary_older_than_the_process_with_its_pid_is_a_leftover(tmp_path, live_pid):
    """The PID was reused: the process that has it now started after the temporary was last changed, so it is not
    the writer."""
    file = _temp_file(tmp_path, "result.json", f"{live_pid}@{HOST}")
    folder = _temp_folder(tmp_path, "A", f"{live_pid}@{HOST}")
    _set_changed(file, LONG_AGO)
    _set_changed(folder, LONG_AGO)
    assert sorted(remove_own_temps(tmp_path)) == sorted([file.name, folder.name])
    assert list(tmp_path.iterdir()) == []


def test_a_folder_written_to_lately_is_not_taken_for_an_old_one(tmp_path, live_pid):
    folder = _temp_folder(tmp_path, "A", f"{live_pid}@{HOST}")
    _set_changed(folder, LONG_AGO)
    (folder / "model.pt2").write_bytes(b"pt2")  # the live writer adds a file: the folder's own time may lag
    os.utime(folder, (LONG_AGO, LONG_AGO))
    assert remove_own_temps(tmp_path) == [] and (folder / "model.pt2").is_file()


def test_writers_that_cannot_be_asked_count_as_gone_once_unchanged_for_an_hour(tmp_path):
    """Another machine's process (a shared file system), or a writer of the names without a PID (older stitchkit)."""
    elsewhere = _temp_file(tmp_path, "result.json", "12345@another-machine")
    unnamed = tmp_path / ".config.yaml.abcd_123.tmp"
    unnamed.write_text("half")
    unnamed_folder = tmp_path / ".B.k2j3ab_z.tmp"
    (unnamed_folder / "model").mkdir(parents=True)
    stale = [elsewhere, unnamed, unnamed_folder]
    assert all(is_own_temp(p) for p in stale)
    assert remove_own_temps(tmp_path) == []  # changed just now: their writers may be writing
    for path in stale:
        _set_changed(path, LONG_AGO)  # far more than UNKNOWN_WRITER_AGE ago
    assert sorted(remove_own_temps(tmp_path)) == sorted(p.name for p in stale)
    assert list(tmp_path.iterdir()) == []


def test_cleaning_never_raises_and_leaves_what_it_cannot_remove(tmp_path, gone_pid, monkeypatch):
    folder = _temp_folder(tmp_path, "A", f"{gone_pid}@{HOST}")
    _set_changed(folder, LONG_AGO)  # a leftover by any rule

    def not_empty(path, *args, **kwargs):  # what rmtree raised when a live writer added a file meanwhile
        raise OSError(errno.ENOTEMPTY, "Directory not empty", str(path))

    monkeypatch.setattr(temps.shutil, "rmtree", not_empty)
    assert remove_own_temps(tmp_path) == [] and folder.is_dir()
    assert remove_own_temps(tmp_path / "missing") == []
    (tmp_path / "a-file").write_text("")
    assert remove_own_temps(tmp_path / "a-file") == []


def test_stitchkits_temporaries_name_the_process_that_writes_them(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(Path(src).name)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    atomic_write_text(tmp_path / "result.json", "{}")
    staging = make_temp_dir(tmp_path / "export")
    writer = re.escape(f"{os.getpid()}@{HOST}")
    assert re.fullmatch(rf"\.result\.json\.{writer}\.[a-z0-9_]{{8}}\.tmp", seen[0])
    assert re.fullmatch(rf"\.export\.{writer}\.[a-z0-9_]{{8}}\.tmp", staging.name) and is_own_temp(staging)
    _set_changed(staging, LONG_AGO)
    assert remove_own_temps(tmp_path) == [] and staging.is_dir()  # this process's own: it is alive


def test_a_target_name_near_the_limit_still_gets_a_temporary_of_its_writer(tmp_path):
    """A file system takes names of up to 255 bytes; the writer's part must not make a valid target unwritable."""
    for name in ["r" * 250 + ".json", "é" * 126]:  # 255 bytes: ASCII, and two-byte characters (never cut in half)
        target = tmp_path / name
        atomic_write_text(target, "{}")
        assert target.read_text() == "{}"
        staging = make_temp_dir(tmp_path / name)
        assert len(os.fsencode(staging.name)) <= 255 and is_own_temp(staging)
        assert f".{os.getpid()}@{HOST}." in staging.name
        staging.rmdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["r" * 250 + ".json", "é" * 126])
