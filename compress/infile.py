"""The one rule for every file the tools read.

An input must be a regular file once symlinks are followed: a directory, a character device
(`/dev/zero`, `/dev/urandom`, a terminal), a FIFO or a socket is refused with `InputError`
("not a regular file") before it is opened, so nothing is read to the end of a stream and
nothing waits for a writer that never comes. The file is opened with O_NONBLOCK (a FIFO put in
its place after the check still cannot block) and checked again on the open descriptor; its
size is checked against the reader's bound before a byte is read, and reads never go past
that size.

`open_input` gives a binary file object (for readers that parse a file in place: zip
archives, .npy headers); `read_input` gives the bytes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from . import limits
from .errors import InputError

_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def _refuse_mode(name: str, mode: int, expected: str) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise InputError(f"{name}: is a directory, expected {expected}")
    what = next((w for test, w in _KINDS if test(mode)), "not a file")
    raise InputError(f"{name}: not a regular file ({what})")


def _oserror(name: str, e: OSError) -> InputError:
    if isinstance(e, FileNotFoundError):
        return InputError(f"{name}: no such file")
    return InputError(f"{name}: cannot read ({e.strerror or e})")


def check_size(name: str, size: int, max_bytes: int | None, limit: str | None) -> None:
    """InputError when a file of `size` bytes is over the reader's bound: `max_bytes`, or the
    limit named `limit` (then the message says how to raise it)."""
    if limit is not None and max_bytes is None:
        limits.check(limit, size, f"{name}: file size in bytes")
    elif max_bytes is not None and size > max_bytes:
        how = f" ({limits.how_to_raise(limit)})" if limit else ""
        raise InputError(f"{name}: {size:,} bytes is more than this kind of file may hold "
                         f"({max_bytes:,}){how}")


def open_input(path: str | os.PathLike, *, max_bytes: int | None = None,
               limit: str | None = None, expected: str = "a file", name: str | None = None):
    """A regular file opened for binary reading (the caller closes it), after the checks of the
    module docstring. `max_bytes` and/or `limit` (the name of a `compress.limits` field) bound
    its size; `expected` completes "is a directory, expected ..."; `name` is how messages name
    the file (default: the path)."""
    name = name or str(path)
    try:
        st = os.stat(path)  # follows symlinks: a link to /dev/zero is a character device
    except OSError as e:
        raise _oserror(name, e) from None
    _refuse_mode(name, st.st_mode, expected)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise _oserror(name, e) from None
    try:
        st = os.fstat(fd)  # what was opened, in case the path changed since the stat
        _refuse_mode(name, st.st_mode, expected)
        check_size(name, st.st_size, max_bytes, limit)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return f


def read_input(path: str | os.PathLike, *, max_bytes: int | None = None,
               limit: str | None = None, expected: str = "a file",
               name: str | None = None) -> bytes:
    """The bytes of a regular file (see `open_input`): exactly its size at open, never more."""
    name = name or str(path)
    with open_input(path, max_bytes=max_bytes, limit=limit, expected=expected, name=name) as f:
        size = os.fstat(f.fileno()).st_size
        try:
            data = f.read(size + 1)  # one byte more tells a file that grew while read
        except OSError as e:
            raise _oserror(name, e) from None
    if len(data) != size:
        raise InputError(f"{name}: changed while it was read ({size:,} bytes, then "
                         f"{len(data):,})")
    return data


def read_text(path: str | os.PathLike, *, limit: str = "max_config_bytes",
              expected: str = "a text file", name: str | None = None) -> str:
    """A small UTF-8 text file (configs, manifests, checksum lists) under `read_input`'s rule."""
    name = name or str(path)
    data = read_input(path, limit=limit, expected=expected, name=name)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{name}: not UTF-8 text (byte {e.start})") from None


def is_regular(path: str | os.PathLike) -> bool:
    """True for a regular file (after symlinks); False for anything else or nothing."""
    try:
        return stat.S_ISREG(os.stat(Path(path)).st_mode)
    except OSError:
        return False
