"""File I/O for checkpoints and weights: atomic writes with one-line errors, reads that run no code.

Writing: :func:`atomic_write_bytes` / :func:`atomic_write_text` write a temporary file
``.<name>.<random>.tmp`` in the destination folder, flush and fsync it, then ``os.replace`` it
over the destination, so a crash leaves the old file or the new one, never half of one. Any
``OSError`` (read-only folder, full disk, a path under a file...) becomes one
:class:`~detmine.errors.CheckpointError` line naming the path and the cause (``[ENOSPC]``...);
the previous file is untouched and the temporary file removed. The file gets the mode a plain
``open(path, "w")`` would give it (``0o666`` less the umask), not ``mkstemp``'s 0600.
:func:`check_writable` checks an output location before a long job (the tools: evaluate,
visualize_negatives, export_weights) and :func:`prepare_output_dir` also creates it, in the
same one-line form.

Reading: a ``.pth`` file is a pickle, and unpickling can run any code the file names (a
``__reduce__`` that calls ``os.system``). :func:`read_torch_file` therefore loads with
``torch.load(weights_only=True)`` -- tensors, numbers, strings, lists, tuples and dicts, all a
checkpoint written by detmine contains -- and refuses a file that needs more with
:class:`UnsafeCheckpointError`, naming the first global it asked for. Only ``trusted=True``
(the tools' ``--trust-checkpoint``) loads such a file with the full unpickler.
A plain ``pickle.dump`` file (not ``torch.save``'s format) is named as such, with the first
global it needs, found by reading its opcodes (nothing runs).
``.safetensors`` files (:func:`read_safetensors`, recognised by content whatever their name)
hold only tensors and a string table of metadata and never run code; detmine's JSON metadata
is parsed with bounds on size and depth (:func:`parse_metadata_json`).

Imports no torch at module level, so light modules (the config writer) can use the writers.
"""

from __future__ import annotations

import errno
import os
import pickle
import pickletools
import re
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detmine.errors import CheckpointError

if TYPE_CHECKING:
    import torch

#: The command-line flag of the tools that loads a file with the full (code-running) unpickler.
TRUST_FLAG = "--trust-checkpoint"

#: Names of temporary files left by an interrupted :func:`atomic_write_bytes`.
STALE_TMP = re.compile(r"^\..+\.[A-Za-z0-9_]{4,}\.tmp$")

_HINTS = {
    errno.EACCES: "the folder is not writable by this user; choose another {where}",
    errno.EPERM: "the folder is not writable by this user; choose another {where}",
    errno.EROFS: "the file system is read-only; choose another {where}",
    errno.ENOSPC: "the disk is full; free space (or lower train.keep_last)",
    errno.EDQUOT: "the disk quota is exhausted; free space (or lower train.keep_last)",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another {where}",
    errno.EEXIST: "a part of the path is a file, not a folder; choose another {where}",
    errno.EISDIR: "the path is a folder; name a file",
    errno.ENAMETOOLONG: "the path is too long",
}

UNCHANGED = "the previous file, if any, is unchanged"


def write_error(
    path: str | os.PathLike,
    exc: OSError,
    what: str = "file",
    *,
    where: str = "output_dir",
    after: str = UNCHANGED,
) -> CheckpointError:
    """The one-line :class:`CheckpointError` for an ``OSError`` raised while writing ``path``:
    ``cannot write checkpoint /r/model_0000100.pth: No space left on device [ENOSPC] (the disk
    is full; ...); the previous file, if any, is unchanged``.

    Args:
        where: the setting to change, named in the hint (``output_dir``, ``--out``...).
        after: what the message ends with (the state the failure left).
    """
    code = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = _HINTS.get(exc.errno, "").format(where=where)
    return CheckpointError(
        f"cannot write {what} {path}: {reason}"
        + (f" [{code}]" if code else "")
        + (f" ({hint})" if hint else "")
        + (f"; {after}" if after else "")
    )


def _umask() -> int:
    """The process umask, read without changing it where the system allows (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_bytes(
    path: str | os.PathLike, data: bytes, *, what: str = "file", where: str = "output_dir"
) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + ``os.replace``), with the
    permissions of a plain ``open(path, "w")`` (``0o666`` less the umask), not ``mkstemp``'s 0600.

    Raises:
        CheckpointError: any ``OSError`` of the write (see :func:`write_error`; ``where`` names
            the setting to change); ``path`` keeps its previous content and no temporary file
            is left behind.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            f = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise write_error(path, exc, what, where=where) from None
    finally:  # also on KeyboardInterrupt: never leave the temporary file
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    _fsync_dir(path.parent)
    return path


def atomic_write_text(
    path: str | os.PathLike, text: str, *, what: str = "file", where: str = "output_dir"
) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text (``config.yaml``, pointer files, JSON)."""
    return atomic_write_bytes(path, text.encode("utf-8"), what=what, where=where)


_NOT_STARTED = "nothing was run"


def _probe(directory: Path) -> None:
    """Create and remove a temporary file in the existing folder ``directory``; raises the
    ``OSError`` of the step that fails (read-only file system, no permission, full disk)."""
    fd, tmp = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=directory)
    os.close(fd)
    os.unlink(tmp)


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (``.`` for a relative path at worst)."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_writable(
    path: str | os.PathLike, what: str = "file", *, where: str = "--out", folder: bool = False
) -> Path:
    """Check, before a long job, that ``path`` can be written later, leaving nothing behind:
    the file ``path`` (or, with ``folder``, the folder ``path``) is not of the other kind, the
    nearest existing folder on its way is a folder (not a file) and takes a new file (one is
    created and removed there). Missing folders are not created: the write does that.

    Raises:
        CheckpointError: one line naming ``path`` and the cause, e.g. ``cannot write results
            file /x/r.json: Read-only file system [EROFS] (...; choose another --out); nothing
            was run``; ``where`` names the setting to change.
    """
    path = Path(path)
    if not folder and path.is_dir():
        raise CheckpointError(
            f"cannot write {what} {path}: it is a folder ({where} must name a file); {_NOT_STARTED}"
        )
    target = path if folder else path.parent
    existing = _nearest_existing(target)
    try:
        if not existing.is_dir():
            code = errno.EEXIST if existing == target else errno.ENOTDIR
            raise OSError(code, f"{existing} is a file, not a folder")
        _probe(existing)
    except OSError as exc:
        raise write_error(path, exc, what, where=where, after=_NOT_STARTED) from None
    return path


def prepare_output_dir(
    path: str | os.PathLike, what: str = "output folder", *, where: str = "--out-dir"
) -> Path:
    """Create the folder ``path`` (and its parents) and check that it takes a new file (one is
    created and removed): for a job about to write there.

    Raises:
        CheckpointError: one line naming ``path`` and the cause (see :func:`check_writable`).
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        _probe(path)
    except OSError as exc:
        raise write_error(path, exc, what, where=where, after="") from None
    return path


def remove_stale_tmp(directory: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.<random>.tmp`` files an interrupted atomic write left in
    ``directory`` (only there, not below); returns what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for p in directory.iterdir():
        if STALE_TMP.match(p.name) and p.is_file():
            try:
                p.unlink()
            except OSError:
                continue
            removed.append(p)
    return sorted(removed)


# ----------------------------------------------------------------------------- reading


class UnsafeCheckpointError(CheckpointError):
    """A ``.pth`` file that weights-only loading refuses; ``global_name`` is the first global
    (class or function) the pickle asked for, e.g. ``numpy._core.multiarray._reconstruct``."""

    def __init__(self, message: str, *, path: Path, global_name: str | None) -> None:
        super().__init__(message)
        self.path = path
        self.global_name = global_name


class CorruptCheckpointError(CheckpointError):
    """A file that is not a readable torch / safetensors file (truncated, garbage)."""

    def __init__(self, message: str, *, path: Path, reason: str) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


# "Unsupported global: GLOBAL numpy._core.multiarray._reconstruct was not ..." (torch >= 2.4),
# "Trying to load unsupported GLOBAL posix.system whose module ..." (blocked modules),
# "Unsupported class numpy.core.multiarray._reconstruct" (torch 2.3).
_GLOBAL = re.compile(r"(?:GLOBAL|Unsupported class) ([A-Za-z_][\w.]*\w)")
_REFUSED = ("GLOBAL", "Unsupported class", "allowlisted", "Can only create new object")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _refusal_detail(message: str) -> tuple[str | None, str | None]:
    """``(global name, detail line)`` when torch's weights-only error is a refusal, else
    ``(None, None)`` (the file is simply unreadable)."""
    if not any(marker in message for marker in _REFUSED):
        return None, None
    m = _GLOBAL.search(message)
    if m:
        return m.group(1), None
    lines = [ln.strip() for ln in message.splitlines() if any(k in ln for k in _REFUSED)]
    return None, (lines[0] if lines else "an object weights-only loading does not allow")


def read_torch_file(
    path: str | os.PathLike,
    map_location: Any = "cpu",
    *,
    trusted: bool = False,
    what: str = "checkpoint",
    hint: str | None = None,
) -> Any:
    """``torch.load`` weights-only (or, with ``trusted``, with the full unpickler).

    Args:
        what: how messages call the file ("checkpoint", "weights file").
        hint: how to proceed when the file is refused (default: pass ``--trust-checkpoint``).

    Raises:
        UnsafeCheckpointError: the file needs globals weights-only loading does not allow
            (also a plain ``pickle.dump`` file that names one); no code of the file has run.
        CheckpointError: a plain pickle without globals (``torch.load`` reads only
            ``torch.save`` files).
        CorruptCheckpointError: the file is truncated or not a torch file.
    """
    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": the error below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=not trusted)
    except pickle.UnpicklingError as exc:
        _raise_if_plain_pickle(path, what)
        name, detail = _refusal_detail(str(exc)) if not trusted else (None, None)
        if name is not None or detail is not None:
            needs = f"the global {name}" if name else detail
            if hint is None:
                hint = f"if you trust the file (e.g. your own checkpoint from an older detmine), pass {TRUST_FLAG}"
            raise UnsafeCheckpointError(
                f"{what} {path} is refused: loading it needs {needs}, and unpickling that can run code "
                f"(only tensors, numbers, strings, lists and dicts load safely); {hint}",
                path=path,
                global_name=name,
            ) from None
        reason = _first_line(exc)
        if "Weights only load failed" in reason:  # garbage: torch blames weights-only first
            reason = next(
                (ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip() and "torch.load" not in ln),
                reason,
            )
        raise _corrupt(path, what, reason) from None
    except Exception as exc:  # zip/pickle errors of every kind mean the same thing to the user
        _raise_if_plain_pickle(path, what)
        raise _corrupt(path, what, _first_line(exc)) from None


_STRING_OPS = {
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
    "UNICODE",
    "BINUNICODE",
    "SHORT_BINUNICODE",
    "BINUNICODE8",
}
_PUSH_OPS = {"MARK", "PROTO", "FRAME", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "POP", "POP_MARK"}


def _plain_pickle_global(path: Path) -> tuple[bool, str | None]:
    """``(whether path is a plain pickle (``pickle.dump``, not ``torch.save``), the first global
    it names or None)``. Reads the opcodes only (:func:`pickletools.genops`): runs nothing."""
    magic = 0x1950A86A20F9469CFC6C  # what a legacy (non-zip) torch.save file pickles first
    try:
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":  # a torch.save zip archive
                return False, None
            f.seek(0)
            pushed: list[Any] = []  # what the opcodes pushed, strings kept (STACK_GLOBAL's operands)
            memo: dict[int, Any] = {}
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("GLOBAL", "INST"):
                    return True, str(arg).replace(" ", ".")
                if op.name == "STACK_GLOBAL":
                    module, name = ([None, None] + pushed)[-2:]
                    both = isinstance(module, str) and isinstance(name, str)
                    return True, f"{module}.{name}" if both else "a class or function"
                if op.name == "LONG1" and arg == magic and len(pushed) == 0:
                    return False, None
                if op.name == "STOP":
                    return True, None
                if op.name == "MEMOIZE":
                    memo[len(memo)] = pushed[-1] if pushed else None
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[int(arg or 0)] = pushed[-1] if pushed else None
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    pushed.append(memo.get(int(arg or 0)))
                elif op.name not in _PUSH_OPS:
                    pushed.append(arg if op.name in _STRING_OPS else None)
    except (OSError, ValueError, EOFError):  # not a pickle at all: garbage
        return False, None
    return False, None


def _raise_if_plain_pickle(path: Path, what: str) -> None:
    """Raise the one-line error for a plain pickle file (``torch.load`` cannot read one, even
    trusted: it expects ``torch.save``'s format); return when ``path`` is not one."""
    plain, name = _plain_pickle_global(path)
    if not plain:
        return
    resave = "save its tensors with torch.save (tensors, numbers, strings, lists and dicts only)"
    if name is not None:
        raise UnsafeCheckpointError(
            f"{what} {path} is refused: it is a plain pickle (pickle.dump, not torch.save) and loading it "
            f"needs the global {name}, and unpickling that can run code; torch.load cannot read a plain "
            f"pickle even with {TRUST_FLAG}: {resave}",
            path=path,
            global_name=name,
        ) from None
    raise CheckpointError(
        f"{what} {path} is a plain pickle (pickle.dump), not a torch.save file, and torch.load cannot "
        f"read it; {resave}"
    ) from None


def _corrupt(path: Path, what: str, reason: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{what} {path} is corrupt or truncated ({reason}); it was not loaded", path=path, reason=reason
    )


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a safetensors file: by suffix, or by content (an 8-byte little-endian
    header length that fits the file, then a JSON header starting with ``{``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def read_safetensors(
    path: str | os.PathLike, device: Any = "cpu", *, what: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file (``device``: where the tensors go; a
    ``torch.load``-style mapping or callable means the CPU).

    Raises:
        CorruptCheckpointError: the file is not a valid safetensors file.
        CheckpointError: the ``safetensors`` package is not installed.
    """
    import torch

    path = Path(path)
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError:
        raise CheckpointError(
            f"{what} {path} is a .safetensors file; reading it needs the safetensors package "
            "(pip install safetensors)"
        ) from None
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str | int):
        device = "cpu"
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _corrupt(path, what, _first_line(exc)) from None
    return tensors, metadata


# ----------------------------------------------------------------------------- detmine metadata

#: Keys of the string table detmine writes into an exported ``.safetensors`` file.
META_CONFIG = "detmine.config"  # the resolved config, JSON (valid YAML too)
META_WEIGHTS = "detmine.weights"  # "ema" | "model": which weights of the checkpoint these are
META_ITERATION = "detmine.iteration"
META_SOURCE = "detmine.source"  # file name of the checkpoint it was exported from
META_CLASS_NAMES = "detmine.class_names"  # JSON list, when the checkpoint has them

#: Bounds of a JSON metadata value (``detmine.config``...): a resolved config is a few KiB and
#: about five levels deep; anything far beyond is not a detmine file (and deep nesting would
#: exhaust Python's recursion limit in ``json.loads``).
MAX_META_CHARS = 4 * 2**20
MAX_META_DEPTH = 64


def _json_depth(text: str, limit: int) -> int:
    """The deepest nesting of ``[`` / ``{`` in the JSON ``text`` (outside strings), counting
    stops past ``limit``."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_metadata_json(text: str, key: str, path: str | os.PathLike) -> Any:
    """The JSON value of the metadata entry ``key`` of the safetensors file ``path``, bounded in
    size (:data:`MAX_META_CHARS`) and nesting (:data:`MAX_META_DEPTH`).

    Raises:
        CheckpointError: too large, too deep or not valid JSON (one line naming file and key).
    """
    import json

    where = f"checkpoint {path}: metadata '{key}'"
    if len(text) > MAX_META_CHARS:
        raise CheckpointError(f"{where} is {len(text)} characters, expected at most {MAX_META_CHARS}")
    if _json_depth(text, MAX_META_DEPTH) > MAX_META_DEPTH:
        raise CheckpointError(f"{where} is nested deeper than {MAX_META_DEPTH} levels; not a detmine file")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{where} is not valid JSON ({_first_line(exc)})") from None
