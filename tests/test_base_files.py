"""core.base.files: atomic writes. A reader (or the next run after a kill) sees the old file or the new one, never
part of one; a failed write leaves no temporary file behind; a full disk is said in words."""
from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from core.base import files

ROOT = Path(__file__).resolve().parent.parent
OLD, NEW = b"old " * 1000, b"new " * 2000


def only(folder: Path) -> list[str]:
    """The names in a folder (a temporary file left behind shows here)."""
    return sorted(p.name for p in folder.iterdir())


def test_until_the_new_file_is_whole_readers_see_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "captions.csv"
    path.write_bytes(OLD)
    seen = []
    real_fsync = os.fsync

    def fsync(fd):  # the new bytes are all written, not yet in place: what does a reader of `path` see now?
        if os.fstat(fd).st_size == len(NEW):
            seen.append(path.read_bytes())
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    files.atomic_write_bytes(path, NEW)
    assert seen == [OLD]
    assert path.read_bytes() == NEW and only(tmp_path) == ["captions.csv"]


def test_a_reader_reading_all_the_while_only_ever_sees_whole_files(tmp_path):
    path = tmp_path / "progress.json"
    big = {b"a" * 2_000_000, b"b" * 3_000_000}
    files.atomic_write_bytes(path, b"a" * 2_000_000)
    reads, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            data = path.read_bytes()
            reads.append(len(data) if data in big else data[:20] + b"... " + str(len(data)).encode())

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(30):
            files.atomic_write_bytes(path, b"b" * 3_000_000 if i % 2 == 0 else b"a" * 2_000_000)
    finally:
        stop.set()
        t.join()
    assert len(reads) > 10 and {r for r in reads if not isinstance(r, int)} == set()


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL")
def test_a_process_killed_while_it_writes_leaves_the_old_file(tmp_path):
    """The writer is killed (SIGKILL: no clean-up runs) with the new bytes written but not in place."""
    path = tmp_path / "metadata.jsonl"
    path.write_bytes(OLD)
    writer = ("import os, sys, time\n"
              "from core.base import files\n"
              "def fsync(fd):\n"
              "    print('written', flush=True); time.sleep(60)\n"
              "files.os.fsync = fsync\n"
              f"files.atomic_write_bytes({str(path)!r}, b'new ' * 2000)\n")
    proc = subprocess.Popen([sys.executable, "-c", writer], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"written\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert path.read_bytes() == OLD
    (left,) = [p for p in tmp_path.iterdir() if p != path]  # the killed write's temporary file...
    assert left.name.startswith(".metadata.jsonl.") and left.name.endswith(".tmp")  # ...hidden, never `path`
    files.atomic_write_bytes(path, NEW)  # the next run writes over it all the same
    assert path.read_bytes() == NEW


def interrupted(kind):
    """A stand-in for os.fsync that fails the write in one of the ways a write fails."""
    def fsync(fd):
        if kind == "error":
            raise OSError(errno.EIO, "Input/output error")
        raise KeyboardInterrupt
    return fsync


@pytest.mark.parametrize("kind", ["error", "ctrl-c", "changed meanwhile"])
@pytest.mark.parametrize("existing", [True, False])
def test_a_failed_write_removes_its_temporary_file_and_keeps_the_old_one(tmp_path, monkeypatch, kind, existing):
    path = tmp_path / "a.txt"
    if existing:
        path.write_bytes(OLD)
    still = None
    if kind == "changed meanwhile":
        still = lambda: False  # noqa: E731 (the caller's check before the replace says no)
    else:
        monkeypatch.setattr(files.os, "fsync", interrupted(kind))
    expected = {"error": OSError, "ctrl-c": KeyboardInterrupt, "changed meanwhile": InterruptedError}[kind]
    with pytest.raises(expected):
        files.atomic_write_bytes(path, NEW, still=still)
    assert only(tmp_path) == (["a.txt"] if existing else [])
    assert not existing or path.read_bytes() == OLD


@pytest.mark.parametrize("code", [errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)])
def test_a_full_disk_is_said_in_words_and_loses_nothing(tmp_path, monkeypatch, code):
    path = tmp_path / "captions.csv"
    path.write_bytes(OLD)

    def full(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(files.DiskFullError) as e:
        files.atomic_write_bytes(path, NEW)
    assert isinstance(e.value, OSError) and e.value.errno == code
    assert str(e.value.strerror) == (f"the disk is full while writing {path}; free some space and run again "
                                     "(everything written before is kept)")
    assert only(tmp_path) == ["captions.csv"] and path.read_bytes() == OLD


def test_other_errors_pass_as_they_are(tmp_path):
    denied = PermissionError(errno.EACCES, "Permission denied")
    assert files.plain_os_error(denied, tmp_path / "x") is denied
    full = files.plain_os_error(OSError(errno.ENOSPC, "No space left on device"), "x.csv")
    assert type(full) is files.DiskFullError and "the disk is full while writing x.csv" in str(full)


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
def test_a_new_file_gets_the_umask_mode_and_a_replaced_one_keeps_its_mode(tmp_path):
    new = tmp_path / "new.txt"
    files.atomic_write_text(new, "x")
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~files.umask()  # not mkstemp's 0600
    kept = tmp_path / "kept.txt"
    kept.write_text("x")
    kept.chmod(0o640)
    files.atomic_write_text(kept, "y")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and kept.read_text() == "y"


def test_a_symlink_is_written_through_and_stays_a_link(tmp_path):
    target = tmp_path / "real" / "config.json"
    target.parent.mkdir()
    target.write_text("{}")
    link = tmp_path / "config.json"
    try:
        link.symlink_to(target)
    except OSError:
        pytest.skip("no symlinks here")
    files.atomic_write_json(link, {"caption": "un café"})
    assert link.is_symlink() and json.loads(target.read_text(encoding="utf-8")) == {"caption": "un café"}
    assert target.read_text(encoding="utf-8").endswith("\n") and "café" in target.read_text(encoding="utf-8")


def test_the_folder_is_made_when_missing(tmp_path):
    path = tmp_path / "runs" / "r1" / "status.json"
    files.atomic_write_json(path, [1, 2])
    assert json.loads(path.read_text()) == [1, 2] and only(path.parent) == ["status.json"]
