"""Read CLIP weights from a local file without executing code from it.

Checkpoints are untrusted input: a pickle can call any importable function while it is
being read, and a small one can describe huge tensors or exponentially large trees. So
every pickle in a file is first read by
:class:`~reattn_batch.workers.checkpoint_pickle.RestrictedUnpickler`, which calls only
harmless functions, refuses shared or cyclic containers and keeps tensors as records, each
checked to lie inside its storage (see that module). Then, by the file's layout:

- **torch.save zip** (PyTorch >= 1.6: ``<root>/data.pkl`` and a record ``<root>/data/<key>``
  per storage) and **torch.save legacy file** (``_use_new_zipfile_serialization=False``:
  pickles of a magic number, a protocol version, system info, the object and its storage
  keys, then each storage as an int64 element count and its bytes): the restricted pass
  only validates (:func:`check_tensors_only`), reading each storage's size (the zip
  record's size, the legacy element count) and none of its bytes. When it finds nothing
  wrong, ``torch.load(weights_only=True)`` builds the object from the same open file. A
  zip's records are read through torch's own zip reader, so that the pickle validated is
  the one ``torch.load`` reads (Python's ``zipfile`` reads another of two ``data.pkl``).
- **TorchScript archive** (``torch.jit.save``, OpenAI's ``ViT-B-16.pt``): a zip laid out
  like the first, whose ``data.pkl`` pickles a tree of ``__torch__.*`` module objects.
  ``torch.load`` refuses these with ``weights_only=True`` and ``torch.jit.load`` would
  compile and run their code, so the restricted reader reads them end to end: the module
  objects become inert records of their attributes, the storages are read from the
  archive and :func:`~reattn_batch.workers.checkpoint_pickle.resolve` makes each tensor a
  view of its storage. The parameter and buffer names of each class are taken from the
  ``__parameters__`` and ``__buffers__`` lists in the archive's code (``<root>/code/``),
  which is read as text and never run.
"""

from __future__ import annotations

import ast
import io
import os
import pickle
import re
import sys
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from reattn_batch.workers.checkpoint_pickle import (
    DisallowedGlobal,
    RestrictedUnpickler,
    TorchScriptObject,
    UnsafeCheckpoint,
    check,
    resolve,
)
from reattn_batch.workers.errors import ModelError, UserError

# Tensors OpenAI's TorchScript CLIP carries for its own loader; no model parameter.
_OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")
_WRAPPER_KEYS = ("state_dict", "model")


_DECLARATIONS = ("__parameters__", "__buffers__")


def class_declarations(source: str) -> dict[str, tuple[str, str]]:
    """For each class of a TorchScript source file that declares both, the list literals of
    its ``__parameters__`` and ``__buffers__`` lines, as text (not yet evaluated).

    A class starts at a line ``class NAME(...`` and runs to the next ``class`` line; a
    declaration is an indented line ``__parameters__ = [...]``; the first class of a name
    and the first declaration of each kind in it count. One pass over the lines: the time
    is linear in the text, whatever it holds (the regular expression this replaces
    backtracked quadratically over runs of blank lines).
    """
    out: dict[str, tuple[str, str]] = {}
    name: str | None = None
    found: dict[str, str] = {}

    def close() -> None:
        if name is not None and name not in out and all(k in found for k in _DECLARATIONS):
            out[name] = (found[_DECLARATIONS[0]], found[_DECLARATIONS[1]])

    for line in source.split("\n"):
        if line.startswith("class "):
            close()
            header, paren, _ = line[len("class ") :].partition("(")
            name, found = (header if paren else None), {}
            continue
        if name is None or not line[:1].isspace():
            continue
        text = line.lstrip()
        for key in _DECLARATIONS:
            prefix = f"{key} = ["
            if key not in found and text.startswith(prefix) and text.endswith("]"):
                found[key] = text[len(prefix) - 1 :]
    close()
    return out


def _declared_tensors(
    archive: zipfile.ZipFile,
    root: str,
    qualname: str,
    parsed: dict[str, dict[str, tuple[str, str]]],
) -> list[str] | None:
    """``__parameters__ + __buffers__`` of a class as its archived source declares them;
    ``parsed`` caches each source file's :func:`class_declarations` (read once per archive)."""
    module, _, name = qualname.rpartition(".")
    code = f"{root}/code/{module.replace('.', '/')}.py"
    if code not in parsed:
        try:
            parsed[code] = class_declarations(archive.read(code).decode())
        except (KeyError, UnicodeDecodeError):
            parsed[code] = {}
    literals = parsed[code].get(name)
    if literals is None:
        return None
    names = [n for literal in literals for n in ast.literal_eval(literal)]
    if not all(isinstance(n, str) for n in names):
        raise pickle.UnpicklingError(f"class {qualname} declares a tensor name that is no string")
    return names


def _read_zip(archive: zipfile.ZipFile, root: str) -> Any:
    """The object a TorchScript archive's ``<root>/data.pkl`` pickles, its tensors viewing
    the ``<root>/data/<key>`` records (each read once: storages named twice are shared)."""
    # Archives older than PyTorch 1.13 (OpenAI's among them) have no byteorder record.
    byteorder = f"{root}/byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder).decode() != sys.byteorder:
        raise pickle.UnpicklingError("the archive was written with the other byte order")
    data = archive.read(f"{root}/data.pkl")
    unpickler = RestrictedUnpickler(io.BytesIO(data), len(data), torchscript=True)
    tree = unpickler.load()
    nbytes = unpickler.storage_bytes(lambda key: archive.getinfo(f"{root}/data/{key}").file_size)
    storages = {
        key: torch.UntypedStorage.from_buffer(
            memoryview(archive.read(f"{root}/data/{key}"))[:size], dtype=torch.uint8
        )
        for key, size in nbytes.items()
    }
    return resolve(tree, storages)


def _read_torchscript(archive: zipfile.ZipFile, root: str) -> dict[str, Any]:
    tree = _read_zip(archive, root)
    declared: dict[str, list[str] | None] = {}
    parsed: dict[str, dict[str, tuple[str, str]]] = {}
    out: dict[str, Any] = {}

    # resolve() has checked that each object is reached once: the walk is linear
    def walk(obj: TorchScriptObject, prefix: str) -> None:
        state = obj.state if isinstance(getattr(obj, "state", None), dict) else {}
        if obj.qualname not in declared:
            declared[obj.qualname] = _declared_tensors(archive, root, obj.qualname, parsed)
        names = declared[obj.qualname] or [k for k, v in state.items() if torch.is_tensor(v)]
        out.update((prefix + n, state[n]) for n in names if torch.is_tensor(state.get(n)))
        for key, value in state.items():
            if isinstance(value, TorchScriptObject):
                walk(value, f"{prefix}{key}.")

    if not isinstance(tree, TorchScriptObject):
        raise pickle.UnpicklingError("data.pkl holds no TorchScript module")
    walk(tree, "")
    return out


def _torchscript_root(path: Path) -> str | None:
    """The archive's root folder if ``path`` is a TorchScript zip, else None."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        _check_sizes((info.file_size for info in archive.infolist()), path.stat().st_size)
        names = archive.namelist()
    # Folders holding constants.pkl or code/: one pass, so that a crafted archive with
    # many entries costs linear time, not entries squared.
    marked = set()
    for name in names:
        top, slash, rest = name.partition("/")
        if slash and rest.startswith(("constants.pkl", "code/")):
            marked.add(top)
    for name in names:
        root = name.removesuffix("/data.pkl")
        if root != name and "/" not in root and root in marked:
            return root
    return None


def _check_sizes(unpacked: Iterable[int], file_size: int) -> None:
    """Refuse a zip whose entries (of these ``unpacked`` sizes) would unpack to far more
    than the file holds.

    torch.save and torch.jit.save store entries uncompressed, so their unpacked total is
    at most the file's size; a crafted archive of compressed entries (a "zip bomb") could
    otherwise take minutes and gigabytes to read.
    """
    total = sum(unpacked)
    if total > 2 * file_size + (1 << 20):
        raise pickle.UnpicklingError(
            f"its entries claim {total} bytes unpacked in a {file_size}-byte file"
        )


# The legacy torch.save format starts with these two pickled numbers.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
# torch.load reads a file that starts with these bytes as a zip, any other as a legacy file
# (torch.serialization._is_zipfile).
_ZIP_MAGIC = b"PK\x03\x04"


def _check_zip(f: IO[bytes], size: int) -> None:
    """Validate a ``torch.save`` zip of ``size`` bytes as ``torch.load`` will read it: its
    records through torch's own zip reader, its ``data.pkl`` by the restricted pass."""
    reader = torch._C.PyTorchFileReader(f)  # what torch.load opens (torch/serialization.py)
    record_size = _record_sizes(reader, f)
    _check_sizes((record_size(name) for name in reader.get_all_records()), size)
    data = reader.get_record("data.pkl")
    unpickler = RestrictedUnpickler(io.BytesIO(data), len(data))
    tree = unpickler.load()
    check(tree, unpickler.storage_bytes(lambda key: record_size(f"data/{key}")))


def _record_sizes(reader: Any, f: IO[bytes]) -> Callable[[str], int]:
    """The unpacked size of each record (by its name under the archive's root folder), as
    torch's zip reader sees it: its own ``get_record_size`` where this torch has one; else
    from the zip's central directory, once no name appears twice in it (with one entry per
    name, Python's zipfile and torch's reader agree on which entry a name means)."""
    own = getattr(reader, "get_record_size", None)
    if own is not None:
        return own
    f.seek(0)
    with zipfile.ZipFile(f) as archive:
        infos = archive.infolist()
    names = [info.filename.split("/", 1)[-1] for info in infos]
    if len(set(names)) != len(names):
        raise pickle.UnpicklingError("a record name appears twice in its zip")
    sizes = dict(zip(names, (info.file_size for info in infos), strict=True))
    return sizes.__getitem__


def _check_legacy(f: IO[bytes], size: int) -> None:
    """Validate a legacy ``torch.save`` file of ``size`` bytes (see the module's docstring
    for the layout): its pickles by the restricted pass, its storages by their element
    counts, skipping their bytes. (torch.load first tries such a file as a tar archive, the
    layout of PyTorch < 0.4, and refuses one under ``weights_only=True``.)"""

    def plain() -> Any:
        return RestrictedUnpickler(f, size).load()

    if plain() != _LEGACY_MAGIC or plain() != _LEGACY_PROTOCOL:
        raise pickle.UnpicklingError("no torch.save file")
    info = plain()
    if not isinstance(info, dict) or info.get("little_endian") != (sys.byteorder == "little"):
        raise pickle.UnpicklingError("the file was written with the other byte order")
    unpickler = RestrictedUnpickler(f, size)
    tree = unpickler.load()
    keys = plain()
    if not isinstance(keys, list) or sorted(keys) != sorted(unpickler.storages):
        raise pickle.UnpicklingError("its list of storages does not match its tensors")
    held = {}  # bytes the file holds for each storage, in the order torch.load reads them
    for key in keys:
        dtype, numel = unpickler.storages[key]
        count = int.from_bytes(f.read(8), "little", signed=True)
        if count != numel:
            raise pickle.UnpicklingError(f"storage {key} holds {count} elements, not {numel}")
        held[key] = min(numel * dtype.itemsize, size - f.tell())
        f.seek(held[key], io.SEEK_CUR)
    check(tree, unpickler.storage_bytes(held.__getitem__))


def check_tensors_only(f: IO[bytes], size: int) -> None:
    """Validate the ``torch.save`` file (zip or legacy, by its first bytes as ``torch.load``
    tells them apart) open as ``f`` at its start, of ``size`` bytes, for
    ``torch.load(weights_only=True)``: a zip whose entries would unpack to far more than the
    file is refused (see :func:`_check_sizes`), every pickle is read by
    :class:`RestrictedUnpickler` and each tensor record checked against its storage's size.
    A refused global raises ``DisallowedGlobal`` naming it, a crafted structure
    ``UnsafeCheckpoint``; other failures propagate as raised."""
    is_zip = f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
    f.seek(0)
    (_check_zip if is_zip else _check_legacy)(f, size)


def load_tensors_only(path: Path) -> Any:
    """The object a ``torch.save`` file (zip or legacy) holds, its tensors on the CPU:
    ``torch.load(path, map_location="cpu", weights_only=True)``, on the open file that
    :func:`check_tensors_only` found nothing wrong in. Raises as that function does; a
    global ``torch.load`` refuses raises ``DisallowedGlobal`` naming it too."""
    with open(path, "rb") as f:
        check_tensors_only(f, os.fstat(f.fileno()).st_size)
        f.seek(0)
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            # torch wraps the cause in advice to load with weights_only=False, not to follow
            cause = str(e).rpartition("WeightsUnpickler error:")[2].strip()
            refused = re.search(r"\bGLOBAL (\S+)", cause)
            raise (
                DisallowedGlobal(refused.group(1)) if refused else pickle.UnpicklingError(cause)
            ) from None


def _unwrap(obj: Any) -> Any:
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            return obj
        obj = inner
    return obj


def read_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Flat CPU state dict of CLIP weights in ``path``, tensors in the dtype they were stored.

    ``path`` is OpenAI's TorchScript archive (``ViT-B-16.pt``) or a ``torch.save``-d state
    dict, possibly wrapped as ``{"state_dict": ...}`` / ``{"model": ...}`` and with
    ``module.`` prefixes. Nothing in the file is executed; every failure is a ``UserError``.
    """
    path = Path(path)
    where = f"clip_weights={path}"
    if not path.is_file():
        raise ModelError(
            f"{where}: no such file; pass the path of OpenAI's ViT-B-16.pt or a state dict, "
            "or 'openai' on a machine with internet"
        )
    try:
        root = _torchscript_root(path)
        if root is not None:
            with zipfile.ZipFile(path) as archive:
                obj: Any = _read_torchscript(archive, root)
        else:
            obj = load_tensors_only(path)
    except Exception as e:  # untrusted bytes: any failure is a refused or unreadable file
        raise not_loaded(where, e, _FIX) from None

    state = _unwrap(obj)
    if not isinstance(state, Mapping):
        raise ModelError(f"{where}: holds a {type(state).__name__}, not a state dict; {_FIX}")
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    for key in _OPENAI_METADATA:
        state.pop(key, None)
    bad = next((k for k, v in state.items() if not torch.is_tensor(v)), None)
    if not state or bad is not None:
        problem = "is empty" if not state else f"has a non-tensor entry {bad!r}"
        raise ModelError(f"{where}: the state dict {problem}; {_FIX}")
    return state


_FIX = "pass OpenAI's ViT-B-16.pt or a state dict of CLIP ViT-B/16 tensors"


def not_loaded(where: str, error: BaseException, fix: str) -> UserError:
    """The one line of a weights file that failed to load with ``error`` (from
    :func:`load_tensors_only` or the TorchScript reader), the same for every loader:
    a global it would run (``DisallowedGlobal``), a crafted structure (``UnsafeCheckpoint``)
    or any other failure (a corrupt or truncated file). ``where``: the file, as its
    parameter names it (``clip_weights=PATH``); ``fix``: what to pass instead."""
    if isinstance(error, DisallowedGlobal):
        return ModelError(
            f"{where}: the file asks to run {error} while loading and this program refuses "
            f"to execute code from a checkpoint; {fix}"
        )
    if isinstance(error, UnsafeCheckpoint):
        return ModelError(f"{where}: refused, {error}; the file is damaged or crafted: {fix}")
    detail = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    detail = detail.split(". ")[0]
    detail = (detail[:120] + "...") if len(detail) > 120 else detail or type(error).__name__
    return ModelError(
        f"{where}: not a readable checkpoint, the file is corrupt or truncated ({detail}); "
        f"download it again, or {fix}"
    )


def looks_like_checkpoint(path: str | Path) -> bool:
    """A cheap sniff: torch.save / torch.jit.save files are zip archives (or, in the
    legacy format, a pickle starting with the PROTO opcode)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"
