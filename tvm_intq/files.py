"""Files the verbs read and write: outputs checked before the long work, and written whole.

Every file tvm-intq writes (libraries and their sidecars, ``.npz`` outputs, reports, QDQ
models, database notes) goes to a temporary file in the target's own folder and is renamed
over the target only when complete (:func:`atomic_path`, :func:`write_bytes`): an interrupted
or failed write (Ctrl-C, a full disk, an exception) leaves the old file or no file, never a
partial one, and a rename within one folder is atomic on POSIX file systems.

Before a verb starts its work it checks what it will write (:func:`check_output_file`,
:func:`check_output_folder`): a missing or unwritable folder, a folder where a file is
expected, or an output that is one of the verb's inputs end the verb at once, in one line.
Plain Python, no numpy, no TVM: the command line runs these checks before it loads anything.
"""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tvm_intq.errors import IntqError

#: An input of a verb: (what it is, e.g. "--calib", path).
Input = tuple[str, "str | os.PathLike | None"]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist yet: the same path, spelled differently?
        return os.path.realpath(a) == os.path.realpath(b)


def _writable_folder(folder: Path, what: str) -> None:
    """Raise :class:`IntqError` unless a file can be created in ``folder`` (tried for real:
    ``os.access`` says yes to root on a read-only file system)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".tvm-intq-probe-")
    except OSError as err:
        raise IntqError(f"{what}: cannot write in {folder} ({_reason(err)})") from None
    os.close(fd)
    os.unlink(probe)


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def check_output_file(
    path, flag: str, inputs: Iterable[Input] = (), create_folder: bool = False
) -> Path:
    """Check that ``path`` (given with the option ``flag``) can be written, before any work:
    not a folder, not one of ``inputs`` (``[(what, path), ...]``: writing would destroy it),
    in a folder that exists (or, with ``create_folder``, whose nearest existing parent is a
    folder) and can be written in. Returns the path."""
    if path is None or str(path) == "":
        raise IntqError(f"{flag}: empty file name")
    p = Path(path)
    what = f"{flag} {p}"
    if p.is_dir():
        raise IntqError(f"{what}: is a folder; give a file name")
    for label, other in inputs:
        if other is not None and str(other) != "" and _same_file(p, Path(other)):
            raise IntqError(
                f"{what} is also the {label} {other}: writing it would destroy the input; "
                "write to another file"
            )
    folder = p.parent
    if not folder.exists():
        if not create_folder:
            raise IntqError(f"{what}: folder {folder} does not exist")
        folder = _existing_parent(folder, what)
    elif not folder.is_dir():
        raise IntqError(f"{what}: {folder} is not a folder")
    _writable_folder(folder, what)
    if p.exists():
        mode = os.stat(p).st_mode
        if not stat.S_ISREG(mode):  # /dev/null, a fifo: the rename would replace the node
            raise IntqError(f"{what}: not a regular file")
        if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
            raise IntqError(f"{what}: the file is read-only")
    return p


def check_output_folder(path, flag: str, inputs: Iterable[Input] = ()) -> Path:
    """Check that the folder ``path`` (option ``flag``) exists and can be written in, or can be
    created; and that it is none of ``inputs``."""
    if path is None or str(path) == "":
        raise IntqError(f"{flag}: empty folder name")
    p = Path(path)
    what = f"{flag} {p}"
    if p.exists() and not p.is_dir():
        raise IntqError(f"{what}: is a file, not a folder")
    for label, other in inputs:
        if other is not None and str(other) != "" and _same_file(p, Path(other)):
            raise IntqError(f"{what} is also the {label}: give another folder")
    _writable_folder(p if p.is_dir() else _existing_parent(p, what), what)
    return p


def _existing_parent(folder: Path, what: str) -> Path:
    """The nearest existing ancestor of ``folder`` (to be created under it), which must be a
    folder."""
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise IntqError(f"{what}: {parent} is a file, not a folder")
            return parent
    return Path(".")


def make_folder(path) -> Path:
    """``mkdir -p path``, an OS error as one :class:`IntqError` line."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise IntqError(f"{p}: cannot create the folder ({_reason(err)})") from None
    return p


def check_input_file(path, flag: str, kind: str = "file") -> Path:
    """``path`` exists and is a file (not a folder): the one line a missing input gets
    (``flag`` names the option it came with; "" for a positional argument)."""
    p = Path(path)
    what = f"{flag} {p}".strip()
    if not p.exists():
        raise IntqError(f"{what}: no such {kind}")
    if p.is_dir():
        raise IntqError(f"{what}: is a folder, not a file")
    if not os.access(p, os.R_OK):
        raise IntqError(f"{what}: cannot read the {kind} (permission denied)")
    return p


def check_distinct(outputs: Iterable[Input]) -> None:
    """No two outputs of one verb are the same file (the second would overwrite the first)."""
    seen: list[tuple[str, Path]] = []
    for label, path in outputs:
        if path is None:
            continue
        for other_label, other in seen:
            if _same_file(Path(path), other):
                raise IntqError(f"{label} {path} is also {other_label}: give two different files")
        seen.append((label, Path(path)))


@contextmanager
def atomic_path(path, mode: int = 0o666) -> Iterator[Path]:
    """A temporary path in ``path``'s folder (same suffix, so tools that look at it write the
    same format); renamed to ``path`` when the block ends without an exception, removed
    otherwise. The file gets the usual permissions (``mode`` less the umask), not
    ``mkstemp``'s 0600. An OS error (full disk, ...) becomes one :class:`IntqError` line."""
    # Through a symbolic link to the file it names (the rename would replace the link).
    path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    except OSError as err:
        raise IntqError(f"{path}: cannot write ({_reason(err)})") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        _sync(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, mode & ~umask)
        with _signals_deferred():
            os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise IntqError(f"{path}: cannot write ({_reason(err)}); nothing was written") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` whole (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode())


def _sync(path: Path) -> None:
    """Flush the file to the disk before the rename makes it the target (a crash after the
    rename must not leave an empty file under the target's name)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _signals_deferred():
    """Hold Ctrl-C/SIGTERM back for the few renames that must happen together."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got = []
    old = {
        s: signal.signal(s, lambda n, _f: got.append(n)) for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for n in got:
            os.kill(os.getpid(), n)


def sha256(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
