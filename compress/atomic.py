"""Write outputs under a temporary name and rename them into place when complete.

A failed run must never leave behind something that looks like a finished output, and an output
must never destroy what the command did not make: an output path equal to an input is refused
(`refuse_same_path`), and `atomic_dir` never deletes a file it did not write.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import InputError
from .paths import SHIPPED_DIR


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _label(path: Path, what: str | None) -> str:
    return f"{what} {path}" if what else str(path)


def _same_file(a: Path, b: Path) -> bool:
    """True when `a` and `b` name the same file: same resolved path, or the same inode."""
    try:
        if os.path.realpath(a) == os.path.realpath(b):
            return True
    except OSError:  # e.g. a symlink loop: fall back on the inode test
        pass
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): different files
        return False


def refuse_same_path(out, *inputs, what: str = "--out") -> None:
    """Raise InputError when the output `out` is (or resolves to) the same file as an input.

    `None` inputs are skipped, so optional arguments can be passed as they are.
    """
    if out is None:
        return
    out = Path(out)
    # The shipped models are the default input of most commands even when no --model is given
    if out.exists() and out.resolve().parent == SHIPPED_DIR:
        raise InputError(f"{_label(out, what)} is a shipped model file ({out.name}): "
                         "choose another output")
    for inp in inputs:
        if inp is None:
            continue
        if _same_file(out, Path(inp)):
            raise InputError(f"{_label(out, what)} is the same file as the input {inp}")


def _prepare_parent(path: Path, what: str | None) -> None:
    """Create the output's parent directory; InputError naming the output if that fails."""
    if path.is_dir() and not path.is_symlink():
        raise InputError(f"{_label(path, what)}: is a directory, expected a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(
            f"{_label(path, what)}: cannot write ({path.parent} is not a directory)"
        ) from None
    except OSError as e:
        raise InputError(f"{_label(path, what)}: cannot write ({e.strerror or e})") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "", what: str | None = None):
    """Yield a temporary file path beside `path`; rename it onto `path` if the block succeeds.

    Failing to create the temporary file (or the parent directory) raises InputError naming
    `path` (prefixed with `what`, e.g. "--out"), never the temporary name.
    """
    path = Path(path)
    _prepare_parent(path, what)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    except OSError as e:
        raise InputError(f"{_label(path, what)}: cannot write ({e.strerror or e})") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise InputError(f"{_label(path, what)}: cannot write ({e.strerror or e})") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_dir_output(path: str | os.PathLike, *, force: bool = False,
                     what: str | None = None, names=(), keep=()) -> None:
    """InputError unless `path` may receive a directory output: it does not exist, or is an
    empty directory, or is a directory and `force` is set. Call it before the work starts.

    `names` are the files the command will write into it: none may be a directory in the way,
    nor one of the inputs `keep` (the command would replace its own input)."""
    path = Path(path)
    label = _label(path, what)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise InputError(f"{label}: exists and is not a directory")
        try:
            nonempty = any(os.scandir(path))
        except OSError as e:
            raise InputError(f"{label}: cannot read ({e.strerror or e})") from None
        if nonempty and not force:
            raise InputError(f"{label}: directory exists and is not empty (--force replaces "
                             "the files this command writes, and nothing else)")
    for name in names:
        dest = path / name
        if dest.is_dir() and not dest.is_symlink():
            raise InputError(f"{label}: {name} is a directory, cannot replace it")
        refuse_same_path(dest, *keep, what=what or "output")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, force: bool = False, what: str | None = None,
               keep=()):
    """Yield a temporary directory beside `path`; move its files into `path` if the block succeeds.

    A new `path` is made by renaming the temporary directory (all or nothing). An existing
    `path` must be an empty directory, or `force` must be set; then only the files the block
    wrote are moved in one by one (each by rename) and nothing else in `path` is touched. A
    `path` that exists and is not a directory is always refused. `keep` lists input files that
    must survive: writing a file of the same name is refused before any work is done.
    """
    path = Path(path)
    label = _label(path, what)
    check_dir_output(path, force=force, what=what)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise InputError(f"{label}: cannot write ({e.strerror or e})") from None
    try:
        yield tmp
        names = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if not p.is_dir())
        for name in names:  # an input of the same name as an output must survive
            refuse_same_path(path / name, *keep, what=what or "output")
        if not path.exists():
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
            try:
                os.replace(tmp, path)
            except OSError as e:
                raise InputError(f"{label}: cannot write ({e.strerror or e})") from None
            return
        for name in names:
            dest = path / name
            if dest.is_dir() and not dest.is_symlink():
                raise InputError(f"{label}: {name} is a directory, cannot replace it")
        for name in names:
            dest = path / name
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp / name, dest)
            except OSError as e:
                raise InputError(f"{label}: cannot write {name} ({e.strerror or e})") from None
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, what: str | None = None) -> None:
    with atomic_path(path, what=what) as tmp:
        tmp.write_bytes(data)


def check_build_dir(path: str | os.PathLike, env: str) -> Path:
    """The build directory `path`, made if missing; InputError naming `env`, the environment
    variable that moves it, when it cannot be written (a read-only checkout, no permission)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"build directory {path} is not writable ({e.strerror or e}): set "
                         f"{env} to a writable directory, e.g. {env}=/tmp/deepcomp-build"
                         ) from None
    return path


@contextlib.contextmanager
def file_lock(path: str | os.PathLike):
    """Hold an exclusive lock on `path` (created if missing), e.g. around a shared build directory."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def save_npy(path, array, *, what: str | None = "--out") -> None:
    """Write `array` as an .npy file atomically (no pickles)."""
    import numpy as np

    with atomic_path(path, what=what) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


def check_output(path, what: str = "--out") -> None:
    """Refuse, before a long simulation, an output that could not be written at the end: a
    directory, or a file in a directory that exists and is not writable (a missing directory
    is made when the output is written)."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{what} {path}: is a directory, expected a file name")
    parent = next((d for d in [p.parent, *p.parent.parents] if d.exists()), None)
    if parent is not None and not parent.is_dir():
        raise InputError(f"{what} {path}: cannot write ({parent} is not a directory)")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path}: cannot write ({parent}: permission denied)")
