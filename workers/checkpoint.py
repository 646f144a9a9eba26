"""Read CLIP weights from a local file without executing code from it.

Checkpoints are untrusted input: a pickle can call any importable function while it is
being read, and a small one can describe huge tensors or exponentially large trees. So no
file goes through ``torch.load`` or ``torch.jit.load``: every pickle is read by
:class:`~reattn_batch.workers.checkpoint_pickle.RestrictedUnpickler`, which calls only
harmless functions, refuses shared or cyclic containers and keeps tensors as records until
their storages are read; :func:`~reattn_batch.workers.checkpoint_pickle.resolve` then makes
each a view of its storage if it fits inside it (see that module). This module finds the
pickles and storages in the three layouts torch writes:

- ``torch.save`` zip (PyTorch >= 1.6): ``<root>/data.pkl`` and a record ``<root>/data/<key>``
  per storage;
- ``torch.save`` legacy file (``_use_new_zipfile_serialization=False``): pickles of a magic
  number, a protocol version, system info, the object and its storage keys, followed by
  each storage as an int64 element count and its bytes;
- TorchScript archive (``torch.jit.save``, OpenAI's ``ViT-B-16.pt``): a zip laid out like
  the first, whose ``data.pkl`` pickles a tree of ``__torch__.*`` module objects; they
  become inert records of their attributes. The parameter and buffer names of each class
  are taken from the ``__parameters__`` and ``__buffers__`` lists in the archive's code
  (``<root>/code/``), which is read as text and never run.
"""

from __future__ import annotations

import ast
import io
import pickle
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch

from reattn_batch.workers.checkpoint_pickle import (
    DisallowedGlobal,
    RestrictedUnpickler,
    TorchScriptObject,
    UnsafeCheckpoint,
    resolve,
)
from reattn_batch.workers.errors import ModelError, UserError

# Tensors OpenAI's TorchScript CLIP carries for its own loader; no model parameter.
_OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")
_WRAPPER_KEYS = ("state_dict", "model")

# The legacy torch.save format starts with these two pickled numbers.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


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


def _read_zip(archive: zipfile.ZipFile, root: str, torchscript: bool) -> Any:
    """The object ``<root>/data.pkl`` pickles, its tensors viewing the ``<root>/data/<key>``
    records (each read once: storages named twice are shared)."""
    # Archives older than PyTorch 1.13 (OpenAI's among them) have no byteorder record.
    byteorder = f"{root}/byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder).decode() != sys.byteorder:
        raise pickle.UnpicklingError("the archive was written with the other byte order")
    data = archive.read(f"{root}/data.pkl")
    unpickler = RestrictedUnpickler(io.BytesIO(data), len(data), torchscript=torchscript)
    tree = unpickler.load()
    storages = {}
    for key, (dtype, numel) in unpickler.storages.items():
        raw = archive.read(f"{root}/data/{key}")
        if len(raw) < numel * dtype.itemsize:
            raise pickle.UnpicklingError(f"storage {key} is truncated")
        storages[key] = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8)
    return resolve(tree, storages)


def _read_legacy(f: IO[bytes], size: int) -> Any:
    """The object a legacy ``torch.save`` file of ``size`` bytes holds (see the module's
    docstring for the layout)."""

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
    storages = {}
    for key in keys:
        dtype, numel = unpickler.storages[key]
        count = int.from_bytes(f.read(8), "little", signed=True)
        if count != numel:
            raise pickle.UnpicklingError(f"storage {key} holds {count} elements, not {numel}")
        raw = f.read(min(numel * dtype.itemsize, size))
        if len(raw) < numel * dtype.itemsize:
            raise pickle.UnpicklingError(f"storage {key} is truncated")
        storages[key] = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8)
    return resolve(tree, storages)


def _read_torchscript(archive: zipfile.ZipFile, root: str) -> dict[str, Any]:
    tree = _read_zip(archive, root, torchscript=True)
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
        _check_sizes(archive, path.stat().st_size)
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


def _check_sizes(archive: zipfile.ZipFile, file_size: int) -> None:
    """Refuse a zip whose entries would unpack to far more than the file holds.

    torch.save and torch.jit.save store entries uncompressed, so their unpacked total is
    at most the file's size; a crafted archive of compressed entries (a "zip bomb") could
    otherwise take minutes and gigabytes to read.
    """
    unpacked = sum(info.file_size for info in archive.infolist())
    if unpacked > 2 * file_size + (1 << 20):
        raise pickle.UnpicklingError(
            f"its entries claim {unpacked} bytes unpacked in a {file_size}-byte file"
        )


def load_tensors_only(path: Path) -> Any:
    """The object a ``torch.save`` file (zip or legacy) holds, its tensors on the CPU, like
    ``torch.load(path, weights_only=True)`` but bounded: a zip whose entries would unpack to
    far more than the file is refused (see :func:`_check_sizes`) and the pickle is read by
    :class:`RestrictedUnpickler`. A refused global raises ``DisallowedGlobal`` naming it,
    a crafted structure ``UnsafeCheckpoint``; other failures propagate as raised."""
    size = path.stat().st_size
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            _check_sizes(archive, size)
            # torch.save's archive is the folder of its first entry, as torch.load finds it
            first = archive.infolist()[0].filename if archive.infolist() else ""
            return _read_zip(archive, first.partition("/")[0], torchscript=False)
    with open(path, "rb") as f:
        return _read_legacy(f, size)


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
    except DisallowedGlobal as e:
        raise ModelError(
            f"{where}: the file asks to run {e} while loading and this program refuses to "
            "execute code from a checkpoint; pass OpenAI's ViT-B-16.pt or a plain state dict "
            "of tensors"
        ) from None
    except UnsafeCheckpoint as e:
        raise ModelError(f"{where}: refused, {e}; the file is damaged or crafted: {_FIX}") from None
    except Exception as e:  # untrusted bytes: any other failure means an unreadable file
        raise _corrupt(where, e) from None

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


def _corrupt(where: str, error: BaseException) -> UserError:
    detail = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    detail = detail.split(". ")[0]
    detail = (detail[:120] + "...") if len(detail) > 120 else detail or type(error).__name__
    return ModelError(
        f"{where}: not a readable checkpoint, the file is corrupt or truncated ({detail}); "
        "download it again or pass another file"
    )


def looks_like_checkpoint(path: str | Path) -> bool:
    """A cheap sniff: torch.save / torch.jit.save files are zip archives (or, in the
    legacy format, a pickle starting with the PROTO opcode)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"
