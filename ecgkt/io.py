"""Writing files so that nothing is ever half-written, and JSON that is strict.

Every file ecgkt writes goes through :func:`atomic_write`: the data goes to a hidden temporary file
in the target's folder (``.<name>.tmp<pid>``), is flushed and fsynced, then renamed over the target.
A reader (or a resumed run) sees the old file or the new one, never a torn one. When writing fails
(a full disk, a killed serialiser), the temporary file is removed and the error names the target;
temporaries left by a process that was killed outright are removed by the next write of the same
target (their writer's pid is no longer alive) and are never read.

JSON is written strictly: NaN and infinities become ``null`` (the format has no NaN; Python's
``json`` would write a bare ``NaN`` token that other readers reject), NumPy scalars and arrays
become numbers and lists, paths become strings.
"""
from __future__ import annotations

import errno
import json
import math
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ECGKTError

_TMP = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)$")


def temp_path(path) -> Path:
    """The temporary file :func:`atomic_write` uses for ``path`` in this process."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder, name: str | None = None) -> list[Path]:
    """Remove temporaries of :func:`atomic_write` in ``folder`` (only those for ``name`` when given)
    whose writing process is gone: leftovers of a run killed mid-write. Returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TMP.match(entry.name)
        if m is None or (name is not None and m.group("name") != name) or _pid_alive(int(m.group("pid"))):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


def format_bytes(n: float) -> str:
    """A size for people: 86.4 kB, 1.2 GB (SI units, as disk tools print them)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def describe_os_error(e: OSError, path=None) -> str:
    """One line for a failed file operation: the file, then the problem in words."""
    where = path if path is not None else (e.filename if e.filename is not None else "")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on the device (free some disk space or write elsewhere)"
    elif e.errno == errno.EROFS:
        what = "the file system is read-only"
    else:
        what = e.strerror or str(e) or type(e).__name__
    return f"{where}: {what}" if where != "" else what


def atomic_write(path, write: Callable, *, fsync: bool = True) -> Path:
    """Write ``path`` through ``write(binary_file)`` all or nothing (see the module docstring).

    Raises :class:`ECGKTError` naming ``path`` when the folder is missing or the write fails
    (disk full, permissions); the temporary file never survives a failure."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ECGKTError(f"{path}: cannot write, folder {path.parent} does not exist")
    if path.is_dir():
        raise ECGKTError(f"{path}: is a folder, expected a file name")
    remove_stale_temps(path.parent, path.name)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _discard(tmp)
        raise ECGKTError(f"cannot write {describe_os_error(e, path)}") from None
    except BaseException:
        _discard(tmp)
        raise
    return path


def _discard(tmp: Path) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


def atomic_write_bytes(path, data: bytes, **kw) -> Path:
    return atomic_write(path, lambda f: f.write(data), **kw)


def atomic_write_text(path, text: str, **kw) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), **kw)


def jsonable(obj):
    """``obj`` with every value JSON can hold strictly: NaN/inf -> None, NumPy -> Python, Path -> str."""
    if isinstance(obj, dict):
        return {(k if isinstance(k, str) else str(jsonable(k))): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if math.isfinite(x) else None
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if hasattr(obj, "tolist") and callable(obj.tolist):  # torch tensors
        return jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps_json(obj, *, indent: int | None = 2, sort_keys: bool = False) -> str:
    """Strict JSON text of ``obj`` (see :func:`jsonable`)."""
    return json.dumps(jsonable(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)


def atomic_write_json(path, obj, *, indent: int | None = 2, sort_keys: bool = False, **kw) -> Path:
    return atomic_write_text(path, dumps_json(obj, indent=indent, sort_keys=sort_keys), **kw)


def read_json(path, what: str = "JSON file"):
    """A JSON file's value; a missing, unreadable or malformed file is one line naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ECGKTError(f"{path}: {what} is missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ECGKTError(f"{path}: cannot read {what} ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ECGKTError(f"{path}: malformed {what} ({e})") from None
