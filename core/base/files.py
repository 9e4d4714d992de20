"""Atomic file writes: a reader never sees half a file (temp file, fsync, os.replace, fsync the folder). And the one
reader of the JSON Lines files that grow by appending (a training run's events, a Caption page table's rows).

The new file looks like the one it replaces (mode, owner/group where permitted, extended attributes), or like any
new file (the umask's mode, not mkstemp's 0600); a symlink is written through, so the link stays a link."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Callable


class DiskFullError(OSError):
    """The disk (or quota) is full: a plain message instead of a traceback."""


def plain_os_error(e: OSError, path) -> OSError:
    """A full disk said in words; other errors as they are."""
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return DiskFullError(e.errno, f"the disk is full while writing {path}; free some space and run again "
                                      "(everything written before is kept)")
    return e


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":  # folders cannot be opened for fsync on Windows; os.replace is still atomic there
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask() -> int:
    """The process umask, read without changing it where the system tells (Linux), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def copy_attributes(st: os.stat_result, src: Path | None, fd: int) -> None:
    """Give the open file `fd` the mode, owner/group (where permitted) and extended attributes of `src` (stat st)."""
    os.chmod(fd, st.st_mode & 0o7777) if os.name != "nt" else None
    if hasattr(os, "fchown"):
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
        except PermissionError:
            try:  # not root: at least the group, when we belong to it
                os.fchown(fd, -1, st.st_gid)
            except PermissionError:
                pass
    if src is not None and hasattr(os, "listxattr"):
        try:
            names = os.listxattr(src)
        except OSError:
            names = []
        for name in names:
            try:
                os.setxattr(fd, name, os.getxattr(src, name))
            except OSError:  # e.g. security.* without privilege: the others are still kept
                pass


def atomic_write_bytes(path: Path, data: bytes, *, like: os.stat_result | None = None,
                       times: tuple[int, int] | None = None, still: Callable[[], bool] | None = None) -> None:
    """Write `data` to `path` atomically.

    like: the stat of the file being replaced (default: the existing file's, if any), whose mode, owner and
    xattrs the new file takes; times: (atime_ns, mtime_ns) to set; still: checked just before the replace, a
    False leaves the old file in place and raises InterruptedError."""
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    if like is None:
        try:
            like = os.stat(path)
        except FileNotFoundError:
            like = None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if like is not None:
                copy_attributes(like, path if path.exists() else None, f.fileno())
            elif os.name != "nt":
                os.chmod(f.fileno(), 0o666 & ~umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if times:
            os.utime(tmp, ns=times)
        if still is not None and not still():
            raise InterruptedError(errno.EINTR, f"{path} changed meanwhile; left unchanged")
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, InterruptedError):
            raise plain_os_error(e, path) from e
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json_lines(path: Path | str) -> list[dict]:
    """The JSON objects of a file that grows a whole line at a time, in order: none when it is missing or
    unreadable; a line that is not a JSON object is skipped, and so is a last line without its newline (torn by a
    crash, or still being written: not data yet).

    Lines end at "\n" only. str.splitlines also ends them at U+2028, U+2029 and NEL, which json.dumps with
    ensure_ascii=False writes as they are: one such character in a caption cut its line in two, and the reader
    that stopped at the first unterminated piece lost every row after it."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    objects = []
    for line in text.split("\n")[:-1]:  # what follows the last "\n" is nothing, or a torn line
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            objects.append(obj)
    return objects
