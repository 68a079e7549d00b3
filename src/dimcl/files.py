"""Writing the files of a run so that a failing write (full disk, I/O error, read-only file system)
never leaves a half-written file behind, and ends the run with one clear error naming the file.

Whole files (config, checkpoint, exports) are written to a temporary file in the same folder and
renamed over the target: the old file stays complete until the new one is. Appended lines
(``metrics.jsonl``) are written with one ``write`` and cut back to the previous end if it fails.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dimcl.errors import BadInputError


class WriteFailedError(RuntimeError):
    """A file of the run could not be written; files written before are intact."""


def _describe(err: OSError) -> str:
    code = errno.errorcode.get(err.errno, "") if err.errno is not None else ""
    return f"{err.strerror or err}" + (f", {code}" if code else "")


@contextmanager
def failed_write(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an ``OSError`` raised inside into a :class:`WriteFailedError` that names ``path``."""
    try:
        yield
    except OSError as err:
        raise WriteFailedError(
            f"could not write '{path}' ({_describe(err)}). Files written before are intact: checkpoints are "
            "replaced only once the new one is complete and no half metrics line is left. Free some space (or "
            "fix the file system) and continue the run with --resume."
        ) from err


# Read once: os.umask can only be read by setting it, which is not safe once threads run.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def temporary_sibling(path: Path) -> tuple[int, str]:
    """A new temporary file next to ``path`` (same file system, so a rename replaces it atomically).

    It gets the permissions a plainly created file would (mkstemp's are owner-only).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)
    return fd, tmp


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def refuse_link(path: str | os.PathLike[str]) -> None:
    """A file dimcl writes is never a symbolic link: writing through one would change the file it points to
    (a link planted in a run directory could make dimcl overwrite any file the user can write)."""
    if os.path.islink(path):
        raise BadInputError(
            f"'{path}' is a symbolic link; dimcl writes the files of a run directory itself and never through a "
            "link. Remove the link (or replace it with the file itself) and run again."
        )


def open_no_follow(path: str | os.PathLike[str], flags: int, mode: int = 0o644) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` (``O_NOFOLLOW``; see :func:`refuse_link`)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            refuse_link(path)
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data``: a reader, or a failure at any moment, sees the old file or the new one.
    A symbolic link at ``path`` is refused (:func:`refuse_link`), not replaced or written through."""
    path = Path(path)
    refuse_link(path)
    with failed_write(path):
        fd, tmp = temporary_sibling(path)
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append ``line`` and a newline as one record: on a failed write the file is cut back to where it was.

    A tail without a newline (a line cut short by an earlier kill) is dropped first, so the new record
    starts on a line of its own instead of being glued to the torn one.
    """
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode()
    with failed_write(path):
        fd = open_no_follow(path, os.O_WRONLY | os.O_CREAT)
        try:
            end = os.fstat(fd).st_size
            if end:
                end = _end_of_last_line(path, end)
            os.lseek(fd, end, os.SEEK_SET)
            try:
                _write_all(fd, data)
            except BaseException:
                os.ftruncate(fd, end)
                raise
            os.ftruncate(fd, end + len(data))  # drops a torn tail that was longer than this record
        finally:
            os.close(fd)


def _end_of_last_line(path: Path, size: int) -> int:
    """The offset just after the file's last newline (``size`` when it ends with one, 0 when it has none)."""
    with open(path, "rb") as f:
        block = 4096
        end = size
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start)
            if end == size and chunk.endswith(b"\n"):
                return size
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                return start + cut + 1
            end = start
    return 0


def check_output_folder(folder: str | os.PathLike[str], option: str = "--out", what: str = "the output") -> None:
    """``folder``, given by the user as ``option``, is or can become a writable directory.

    Checked before anything is read or written, so a bad path is bad input (exit 2, naming it), never an
    ``OSError`` from deep inside the first write. Creates nothing.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BadInputError(f"{option} '{folder}' is a file, not a directory; give a directory for {what}")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise BadInputError(f"{option} '{folder}' cannot be created: '{existing}' is a file, not a directory")
    err = write_probe(existing)
    if err is not None:
        raise BadInputError(
            f"{option} '{folder}' is not writable ({err.strerror} in '{existing}'); choose a directory you can write"
        )


def write_probe(folder: str | os.PathLike[str]) -> OSError | None:
    """None when a file can be created in ``folder``, else the error that refused it. Tried rather than asked
    (``os.access``): root passes every permission check, but not a read-only mount's."""
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        return err
    return None
