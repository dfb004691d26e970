"""Files mt writes for the user: they appear only when complete, never replace one of the
command's inputs, and a file-system fault is one sentence naming the path and what still holds.

Every writer in mt goes through here: `Output` (a text stream such as translations),
`write_text` / `write_bytes_with` (a whole file at once: reports, pictures, checkpoints), and
`refuse_inputs` (an output that is the same file as an input). `fault` is the one place that
turns an OSError, or the RuntimeError torch raises while serializing to a full disk, into an
`mt.errors.FileFault`; the CLI prints its sentence and exits 2.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from mt.errors import FileFault, MTError

# errno -> what the user should read; the rest fall back to the system's own words
_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.EEXIST: "it already exists",
    errno.EFBIG: "the file is too large for the file system",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EIO: "an input/output error (a failing disk or network file system)",
}

TEMP_MARK = ".tmp-"  # .<name>.tmp-<pid>: a write in progress, or one a killed process left
PARTIAL_SUFFIX = ".partial"


def reason(exc: BaseException, folder: Path | None = None) -> str:
    """What went wrong, in words: the errno's meaning, else the exception's first line.

    torch's serializer reports a full disk as a RuntimeError without an errno ("... file write
    failed"); when `folder` is given and its file system has (almost) no space left, the
    reason says so.
    """
    exc = _os_error_in(exc) or exc
    if isinstance(exc, OSError) and exc.errno in _REASONS:
        return _REASONS[exc.errno]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    if folder is not None and _nearly_full(folder):
        return "no space left on the device"
    text = str(exc).strip()
    return (text.splitlines()[0][:200] if text else type(exc).__name__).rstrip(".")


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def is_write_fault(exc: BaseException) -> bool:
    """An OSError, or the RuntimeError a C++ writer (torch's serializer, CTranslate2) raises
    when its write fails; other RuntimeErrors are bugs and keep their traceback."""
    if _os_error_in(exc) is not None:
        return True
    return isinstance(exc, RuntimeError) and "writ" in str(exc).lower()


def _os_error_in(exc: BaseException) -> OSError | None:
    """`exc` or the OSError it was raised while handling: torch's writer, failing on a full
    disk, raises "unexpected pos ..." from inside the handler of the OSError that says why."""
    seen: BaseException | None = exc
    for _ in range(8):  # a short chain; never loop on a cycle
        if seen is None or isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def fault(exc: BaseException, path: Path | str, holds: str, doing: str = "write") -> FileFault:
    """The sentence for a failed read or write of `path`; `holds` says what is still intact."""
    where = Path(path).parent if doing == "write" else None
    message = f"cannot {doing} {path}: {reason(exc, where)}"
    return FileFault(f"{message}; {holds}." if holds else f"{message}.", str(path))


def describe_os_error(exc: OSError) -> str:
    """One sentence for an OSError that reached the CLI: the path(s) and the reason."""
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    return f"cannot use {paths or 'a file'}: {reason(exc)}."


def unchanged(path: Path) -> str:
    """What still holds of `path` after a failed write: it is as it was, or it never existed."""
    return f"{path} is unchanged" if path.exists() else f"{path} was not created"


def temp_path(path: Path) -> Path:
    """Where a write to `path` goes before its atomic rename: hidden, tagged with our pid."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def _is_special(path: Path) -> bool:
    """A path that exists and is neither a regular file nor a folder (a device, a FIFO)."""
    return path.exists() and not path.is_file() and not path.is_dir()


def check_destination(path: Path, key: str = "output") -> None:
    """Refuse a destination that is a folder, or whose folder is a file, before any work."""
    if path.is_dir():
        raise MTError(f"{key} {path} is a folder; name a file to write.")
    check_parents(path, key)


def check_parents(path: Path, key: str) -> None:
    """Refuse a path that runs through a file (`out.txt/x`), before any work."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise MTError(f"{key} {path}: {parent} is a file, not a folder.")
            break


def refuse_inputs(output: Path | str, inputs: Iterable[Path | str], key: str = "output") -> None:
    """Refuse an output that is the same file as one of the inputs (links and other spellings
    of one path included), before anything is opened for writing.

    Raises:
        MTError: naming both spellings; nothing has been written.
    """
    out = Path(output)
    if str(output) == "-" or not out.exists():
        return
    for item in inputs:
        if str(item) == "-" or not Path(item).exists():
            continue
        if os.path.samefile(out, item):
            raise MTError(
                f"{key} {output} is the same file as the input {item}; writing it would destroy "
                "the input. Choose another output; nothing was written."
            )


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_temp(path: Path, binary: bool) -> tuple[Path, IO[Any]]:
    check_destination(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if binary:
            return tmp, open(tmp, "wb")
        return tmp, open(tmp, "w", encoding="utf-8", newline="\n")
    except OSError as exc:
        raise fault(exc, path, unchanged(path)) from None


def _publish(tmp: Path, f: IO[Any], path: Path) -> None:
    """flush, fsync, close, rename: the file appears complete or not at all."""
    f.flush()
    os.fsync(f.fileno())
    f.close()
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_bytes_with(path: Path, write: Callable[[IO[bytes]], None], holds: str = "") -> None:
    """Call `write(f)` on a temp file beside `path`, then move it into place.

    Any failure (a full disk, a read-only file system, torch's serializer) removes the temp file,
    leaves `path` as it was and raises FileFault; other exceptions pass through unchanged.
    """
    if _is_special(path):
        try:
            with open(path, "wb") as f:
                write(f)
        except (OSError, RuntimeError) as exc:
            if not is_write_fault(exc):
                raise
            raise fault(exc, path, holds) from None
        return
    tmp, f = _open_temp(path, binary=True)
    try:
        try:
            write(f)
            _publish(tmp, f, path)
        except (OSError, RuntimeError) as exc:
            if not is_write_fault(exc):
                raise
            raise fault(exc, path, holds or unchanged(path)) from None
    finally:
        f.close()
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str, holds: str = "") -> None:
    """Write `text` (UTF-8) to `path` atomically; see `write_bytes_with`."""
    write_bytes_with(path, lambda f: f.write(text.encode("utf-8")), holds)


def publish_file(staged: Path, path: Path) -> None:
    """Move a finished file (written by a library to `temp_path(path)`) into place."""
    try:
        os.replace(staged, path)
    except OSError as exc:
        staged.unlink(missing_ok=True)
        raise fault(exc, path, unchanged(path)) from None


class Output:
    """A text output (`-` is stdout) that appears at its path only when complete.

    Lines go to a hidden temp file beside the destination. `commit(n)` marks everything written
    so far as n whole lines. On success `close()` moves the file into place; on any failure
    `abandon()` keeps the committed lines as `<output>.partial` (whole lines only) and leaves
    the output itself untouched. A write error is a FileFault naming the output.
    """

    def __init__(self, path: str) -> None:
        self.name, self.lines = path, 0
        self.path = None if path == "-" else Path(path)
        self._size = 0
        self._tmp: Path | None = None
        self._f: IO[str] | None = None
        if self.path is not None and _is_special(self.path):
            try:  # /dev/null, a FIFO, /dev/stdout: written in place, never renamed over
                self._f = open(self.path, "w", encoding="utf-8", newline="\n")
            except OSError as exc:
                raise fault(exc, self.path, "") from None
        elif self.path is not None:
            self._tmp, self._f = _open_temp(self.path, binary=False)

    def write(self, text: str) -> None:
        """Write text (stdout is flushed at once, so a pipe sees each batch)."""
        if self._f is None:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        try:
            self._f.write(text)
        except OSError as exc:
            raise self._fault(exc) from None

    def commit(self, lines: int) -> None:
        """Flush, and remember that the file now ends after `lines` more whole lines."""
        if self._f is not None:
            try:
                self._f.flush()
                self._size = self._f.tell()
            except OSError as exc:
                raise self._fault(exc) from None
        self.lines += lines

    def close(self) -> None:
        """Move the finished file into place."""
        if self._f is not None and self._tmp is None:  # a device or a pipe
            try:
                self._f.close()
            except OSError as exc:
                raise self._fault(exc) from None
            self._f = None
        if self._f is None or self._tmp is None or self.path is None:
            return
        try:
            _publish(self._tmp, self._f, self.path)
        except OSError as exc:
            raise self._fault(exc) from None
        finally:
            self._f.close()
            self._tmp.unlink(missing_ok=True)
        self._f = None

    def abandon(self) -> str:
        """Keep the committed lines as `<output>.partial`; returns a sentence saying so."""
        if self._f is not None and self._tmp is None:  # a device or a pipe
            try:
                self._f.close()
            except OSError:
                pass  # its fault is being reported already
            self._f = None
        if self._f is None or self._tmp is None or self.path is None:
            return ""
        try:
            self._f.close()
        except OSError:
            pass  # the flush of uncommitted text failed; they are cut below anyway
        self._f = None
        if self.lines == 0:
            self._tmp.unlink(missing_ok=True)
            return unchanged(self.path)
        partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        try:
            os.truncate(self._tmp, self._size)  # a line cut mid-way is not kept
            os.replace(self._tmp, partial)
        except OSError:
            self._tmp.unlink(missing_ok=True)
            return unchanged(self.path)
        return (
            f"the output of the first {self.lines} input lines is in {partial}; "
            f"{unchanged(self.path)}"
        )

    def _fault(self, exc: OSError) -> FileFault:
        assert self.path is not None
        return fault(exc, self.path, "")
