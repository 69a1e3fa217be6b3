"""Atomic writes and early checks of output locations.

* Files: :func:`write_text`, :func:`write_json`, :func:`write_file` write a temporary file in
  the target folder, then rename it over the target, so a reader (or a crash) never sees a
  half-written file.  JSON is indented by 2, with a short list of scalars (or of lists of
  scalars) on one line.  The result has a normal mode: the mode of the file it replaces, else
  ``0o666`` less the umask (``tempfile`` would leave ``0600``).
* Folders: :func:`replace_dir` builds a whole folder in a sibling temporary folder and swaps
  it in at the end (one ``renameat2(RENAME_EXCHANGE)`` where Linux offers it, else two
  renames), so a failure or an interrupt leaves the old folder exactly as it was.
* Checks: :func:`check_output_file` and :func:`check_output_dir` refuse, in one line
  (:class:`golden.errors.UserError`), an output that cannot be written: a folder where a file
  is wanted, a file where a folder is wanted, a parent below a regular file, a folder that
  cannot be written into.  Commands call them before any work starts.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .errors import UserError

__all__ = ["write_text", "write_json", "write_file", "replace_dir", "check_output_file", "check_output_dir",
           "default_mode"]


def _read_umask() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)          # no /proc: read it the classic way (not thread-safe, once)
    os.umask(old)
    return old


def default_mode(directory: bool = False) -> int:
    """The mode a plain ``open()`` (``mkdir()``) would give a new file (folder)."""
    return (0o777 if directory else 0o666) & ~_read_umask()


def _mode_for(path: str, directory: bool = False) -> int:
    try:
        st = os.stat(path)
    except OSError:
        return default_mode(directory)
    if (stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)):
        return stat.S_IMODE(st.st_mode)
    return default_mode(directory)


def write_file(path: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Call ``writer(tmp_path)`` to write a temporary file beside ``path``, then rename it to
    ``path`` (through a symlink: its target is replaced)."""
    path = os.path.realpath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    def writer(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)
    write_file(path, writer)


def _is_scalar(x) -> bool:
    return not isinstance(x, (dict, list, tuple))


def _json_text(obj, depth: int = 0, width: int = 100) -> str:
    """``json.dumps(obj, indent=2)``, except that a list of scalars and short lists goes on one
    line where it fits in ``width`` characters (a timing path's steps, a cell's location:
    indented one number a line they made ``reports/hw.json`` three times its size)."""
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(obj, dict) and obj:
        # a key as json.dumps writes it (a number or a bool key quoted in its JSON spelling)
        items = [f"{inner}{json.dumps({k: 0})[1:-4]}: {_json_text(v, depth + 1, width)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)) and obj:
        # (the shape first: a deep list is not written whole only to be thrown away)
        if all(_is_scalar(x) or (isinstance(x, (list, tuple)) and all(map(_is_scalar, x))) for x in obj):
            flat = json.dumps(obj)
            if len(inner) + len(flat) <= width:
                return flat
        return "[\n" + ",\n".join(inner + _json_text(x, depth + 1, width) for x in obj) + "\n" + pad + "]"
    return json.dumps(obj)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, _json_text(obj) + "\n")


# --- folders ---------------------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: str, b: str) -> bool:
    """Swap two paths atomically (Linux renameat2); False where that is not available."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError, ImportError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(parent: Path, name: str) -> None:
    """Temporary folders of a killed earlier run (``.<name>.new-<pid>-*``) whose process is gone."""
    for p in parent.glob(f".{name}.new-*"):
        try:
            pid = int(p.name[len(name) + 6:].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def replace_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block ends without an
    exception, that folder replaces ``path`` as a whole.  On any exception (Ctrl-C included)
    the temporary folder is removed and ``path`` is left exactly as it was."""
    target = Path(os.path.realpath(os.fspath(path)))
    if target.exists() and not target.is_dir():
        raise UserError(f"{path} is a file, not a folder")
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(parent, target.name)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{target.name}.new-{os.getpid()}-"))
    try:
        yield tmp
        os.chmod(tmp, _mode_for(str(target), directory=True))
        if not target.exists():
            os.rename(tmp, target)
        elif _exchange(str(tmp), str(target)):
            shutil.rmtree(tmp)                    # tmp now holds the old folder
        else:
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{target.name}.old-{os.getpid()}-"))
            os.rename(target, old / "x")
            os.rename(tmp, target)
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --- checks before the work ------------------------------------------------------------------

def _stat(path: str, what: str):
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return "below-file"
    except (OSError, ValueError) as exc:
        raise UserError(f"{what} {path!r}: {getattr(exc, 'strerror', None) or exc}") from None


def _writable_folder(folder: str, what: str, path: str) -> None:
    """``folder`` (or the nearest existing folder above it) must take a new file."""
    probe = os.path.abspath(folder)
    while True:
        st = _stat(probe, what)
        if st is None:
            up = os.path.dirname(probe)
            if up == probe:
                break
            probe = up
            continue
        if st == "below-file" or not stat.S_ISDIR(st.st_mode):
            bad = probe
            while _stat(os.path.dirname(bad), what) in (None, "below-file"):
                bad = os.path.dirname(bad)
            raise UserError(f"{what} {path}: {bad} is a file, not a folder")
        break
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".hwgen-write-check-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UserError(f"{what} {path}: cannot write into {probe} ({exc.strerror or exc})") from None


def _valid_text(path: str, what: str) -> str:
    if not isinstance(path, str) or not path.strip():
        raise UserError(f"{what}: an empty path")
    if "\0" in path:
        raise UserError(f"{what} {path!r}: a path cannot hold a NUL character")
    return path


def check_output_file(path: str, what: str = "output") -> None:
    """Refuse (one line) a file path that cannot be written, before any work."""
    _valid_text(path, what)
    real = os.path.realpath(path)
    st = _stat(real, what)
    if st not in (None, "below-file"):
        if stat.S_ISDIR(st.st_mode):
            raise UserError(f"{what} {path} is a folder; give a file path")
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{what} {path} is not a regular file")
    if os.path.basename(path.rstrip("/")) in ("", ".", "..") or path.endswith("/"):
        raise UserError(f"{what} {path} names a folder; give a file path")
    _writable_folder(os.path.dirname(real), what, path)


def check_output_dir(path: str, what: str = "output folder") -> None:
    """Refuse (one line) a folder that cannot be (re)placed, before any work."""
    _valid_text(path, what)
    real = os.path.realpath(path)
    if real == os.path.dirname(real):
        raise UserError(f"{what} {path}: the root folder cannot be replaced")
    st = _stat(real, what)
    if st not in (None, "below-file") and not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {path} is a file, not a folder")
    _writable_folder(os.path.dirname(real), what, path)
