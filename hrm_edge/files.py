"""File helpers shared by checkpoints, bundles, puzzle sets and engines (standard library only).

Output locations are checked before long work starts (`check_output_dir`, `check_output_file`);
a directory that is written in one piece (a bundle) is built in a temporary sibling under an
exclusive lock (`exclusive_lock`) and swapped into place atomically (`replace_dir`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import glob
import hashlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from hrm_edge.errors import HrmEdgeError


class OutputPathError(HrmEdgeError):
    """An output location that cannot be written: under a regular file, read-only, or an existing
    thing that may not be replaced."""


class LockedError(HrmEdgeError):
    """Another live process holds the exclusive lock of an output."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _existing_ancestor(path: Path) -> Path:
    """`path` or its nearest existing ancestor; raises OutputPathError when a regular file is on the way."""
    for p in (path, *path.parents):
        if p.exists():
            return p
        if p.is_symlink():  # a dangling link: following it creates nothing useful
            raise OutputPathError(f"{path}: {p} is a broken symbolic link")
    return Path.cwd()


def _check_writable_location(path: Path, what: str, parent: Path) -> None:
    """Raise OutputPathError unless `parent` (where `path` goes) is, or can be created as, a
    writable directory."""
    found = _existing_ancestor(parent)
    if not found.is_dir():
        where = "is" if found == path else f"is under {found}, which is"
        raise OutputPathError(f"{what} {path} {where} a regular file, not a directory")
    if not os.access(found, os.W_OK | os.X_OK):
        where = "" if found == path else f" (its nearest existing parent {found})"
        raise OutputPathError(f"{what} {path}{where} is not writable")


def check_output_dir(path: str | Path, what: str = "output directory") -> Path:
    """Check that `path` is, or can be created as, a writable directory; returns it as a Path.

    Nothing is created. Raises OutputPathError (one line naming the culprit) when `path` is an
    existing non-directory, lies under a regular file, or its nearest existing ancestor is not
    writable."""
    path = Path(path)
    _check_writable_location(path, what, path)
    return path


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """Check that the file `path` can be written: not a directory, not a read-only file, and its
    directory as in `check_output_dir`; returns it as a Path."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a directory")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{what} {path} is not writable")
    _check_writable_location(path, what, path.parent)
    return path


_HELD: dict[Path, int] = {}  # lock files this process holds -> nesting depth


def lock_path(target: Path) -> Path:
    """The lock file of output `target`: `.NAME.lock` beside it."""
    return target.with_name(f".{target.name}.lock")


def _open_locked(path: Path, target: Path, what: str) -> int:
    """A descriptor of lock file `path` holding its exclusive flock; retried when the file was
    unlinked (by a releasing holder) between our open and our flock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(f"{target}: another {what} to this path is running (pid {holder}; lock {path})") \
                from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)


@contextlib.contextmanager
def exclusive_lock(target: str | Path, what: str = "export") -> Iterator[Path]:
    """Hold an exclusive `fcntl.flock` on `.NAME.lock` beside `target` for the `with` block.

    Fails at once with LockedError naming the holder's pid (written into the lock file) when another
    process holds it; nested use in the same process is a no-op. The lock file is removed on release;
    after a crash it stays, unlocked (the kernel drops a dead process's locks), and is reused.
    Yields the lock file's path."""
    target = Path(target)
    path = lock_path(target).resolve()
    if path in _HELD:
        _HELD[path] += 1
        try:
            yield path
        finally:
            _HELD[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_locked(path, target, what)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[path] = 1
        try:
            yield path
        finally:
            del _HELD[path]
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # while still locked: a process that opened it first retries on a new file
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def partial_glob(target: Path) -> str:
    """Glob of the temporary siblings an export of `target` makes (`.NAME.*.partial`, `.NAME.old-*`)."""
    return f".{glob.escape(target.name)}.*"


def remove_stale_partials(target: str | Path) -> list[Path]:
    """Remove the temporary siblings a killed export of `target` left (`.NAME.<random>.partial`,
    `.NAME.old-<pid>`); returns what was removed. Call only while holding `exclusive_lock(target)`:
    then no live exporter owns them."""
    target = Path(target)
    removed = []
    for p in sorted(target.parent.glob(partial_glob(target))):
        if p.is_dir() and not p.is_symlink() and (p.name.endswith(".partial") or ".old-" in p.name):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swap `a` and `b` atomically with Linux renameat2(RENAME_EXCHANGE); False where unsupported
    (not Linux, an old kernel or libc, a file system without it)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def swap_dirs(a: Path, b: Path) -> None:
    """Exchange the directories `a` and `b` (both exist). Atomic on Linux (renameat2); elsewhere two
    renames through a `.NAME.old-<pid>` sibling, with a moment in which `b` is missing (a crash there
    leaves the old directory at `.NAME.old-<pid>`, removed by the next export)."""
    if _renameat2_exchange(a, b):
        return
    trash = b.with_name(f".{b.name}.old-{os.getpid()}")
    b.rename(trash)
    a.rename(b)
    trash.rename(a)


def replace_dir(new: str | Path, target: str | Path) -> None:
    """Put the complete directory `new` at `target`: a rename when `target` does not exist, else an
    atomic swap (`swap_dirs`) after which the old directory, now at `new`, is deleted. Until the
    swap the old directory stays whole at `target`."""
    new, target = Path(new), Path(target)
    if target.exists() or target.is_symlink():
        swap_dirs(new, target)
        if new.is_dir() and not new.is_symlink():
            shutil.rmtree(new, ignore_errors=True)
        else:
            new.unlink()
    else:
        new.rename(target)
