"""Read CLIP weights from a local file without executing code from it.

Checkpoints are untrusted input: a pickle can call any importable function while it is
being read. Plain state dicts therefore go through ``torch.load(..., weights_only=True)``,
whose unpickler only rebuilds tensors and containers.

OpenAI's ``ViT-B-16.pt`` is no state dict but a TorchScript archive (``torch.jit.save``):
a zip whose ``<root>/data.pkl`` pickles a tree of ``__torch__.*`` module objects, whose
tensors live in ``<root>/data/<key>`` and whose TorchScript sources sit under
``<root>/code/``. ``torch.load`` refuses such archives with ``weights_only=True`` and
``torch.jit.load`` would compile and run the code in them, so this module reads them itself:
an unpickler that allows only the globals needed to rebuild tensors, turns every
``__torch__`` class into an inert record of its attributes and reads the storages from the
zip. The parameter and buffer names of each class are taken from the ``__parameters__`` and
``__buffers__`` lists in the archive's code, which is read as text and never run.
"""

from __future__ import annotations

import ast
import io
import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from reattn_batch.workers.errors import ModelError, UserError

# Tensors OpenAI's TorchScript CLIP carries for its own loader; no model parameter.
_OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")
_WRAPPER_KEYS = ("state_dict", "model")

# "torch FloatStorage" etc. name a storage's dtype in TorchScript pickles. A fixed table:
# the legacy storage classes are deprecated, and reading their .dtype warns.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}
# Newer writers may name the dtype itself ("torch float16").
_STORAGE_DTYPES |= {str(dtype).removeprefix("torch."): dtype for dtype in _STORAGE_DTYPES.values()}


class _Storage(NamedTuple):
    data: torch.UntypedStorage
    dtype: torch.dtype


class _TorchScriptObject:
    """Inert stand-in for a ``__torch__.*`` object: it only keeps its pickled state."""

    qualname = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(
    storage: _Storage,
    offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    *_requires_grad_hooks_metadata: Any,
) -> torch.Tensor:
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor without a storage from the archive")
    return torch.empty(0, dtype=storage.dtype).set_(storage.data, offset, size, stride)


def _rebuild_parameter(data: torch.Tensor, *_requires_grad_hooks_state: Any) -> torch.Tensor:
    return data


# The only callables a TorchScript data.pkl may reach, each replaced by a harmless one.
_SAFE_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.jit._pickle", "restore_type_tag"): lambda value, _type: value,
    **{("torch.jit._pickle", f"build_{k}list"): list for k in ("int", "double", "bool")},
    ("torch.jit._pickle", "build_tensorlist"): list,
}


class _DisallowedGlobal(pickle.UnpicklingError):
    pass


class _TorchScriptUnpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, root: str, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.root = archive, root
        self.classes: dict[str, type[_TorchScriptObject]] = {}
        self.storages: dict[str, _Storage] = {}  # a key named twice is read once, and shared

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            if qualname not in self.classes:
                attrs = {"qualname": qualname}
                self.classes[qualname] = type(name, (_TorchScriptObject,), attrs)
            return self.classes[qualname]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[module, name]
        raise _DisallowedGlobal(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"storage of unknown type {dtype!r}")
        if key not in self.storages:
            raw = self.archive.read(f"{self.root}/data/{key}")
            if len(raw) < numel * dtype.itemsize:
                raise pickle.UnpicklingError(f"storage {key} is truncated")
            storage = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8)
            self.storages[key] = _Storage(storage, dtype)
        return _Storage(self.storages[key].data, dtype)


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


def _read_torchscript(archive: zipfile.ZipFile, root: str) -> dict[str, Any]:
    # Archives older than PyTorch 1.13 (OpenAI's among them) have no byteorder record.
    byteorder = f"{root}/byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder).decode() != sys.byteorder:
        raise pickle.UnpicklingError("the archive was written with the other byte order")
    tree = _TorchScriptUnpickler(archive, root, archive.read(f"{root}/data.pkl")).load()
    declared: dict[str, list[str] | None] = {}
    parsed: dict[str, dict[str, tuple[str, str]]] = {}
    out: dict[str, Any] = {}

    def walk(obj: _TorchScriptObject, prefix: str) -> None:
        state = obj.state if isinstance(getattr(obj, "state", None), dict) else {}
        if obj.qualname not in declared:
            declared[obj.qualname] = _declared_tensors(archive, root, obj.qualname, parsed)
        names = declared[obj.qualname] or [k for k, v in state.items() if torch.is_tensor(v)]
        out.update((prefix + n, state[n]) for n in names if torch.is_tensor(state.get(n)))
        for key, value in state.items():
            if isinstance(value, _TorchScriptObject):
                walk(value, f"{prefix}{key}.")

    if not isinstance(tree, _TorchScriptObject):
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
    """``torch.load(path, weights_only=True)`` on the CPU, after refusing a zip whose entries
    would unpack to far more than the file (see :func:`_check_sizes`). A refused global
    raises ``_DisallowedGlobal`` naming it; every other failure propagates as raised."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            _check_sizes(archive, path.stat().st_size)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch names a refused global "GLOBAL module.name"
        refused = re.search(r"\bGLOBAL (\S+)", str(e))
        raise (_DisallowedGlobal(refused.group(1)) if refused else e) from None


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
    except _DisallowedGlobal as e:
        raise ModelError(
            f"{where}: the file asks to run {e} while loading and this program refuses to "
            "execute code from a checkpoint; pass OpenAI's ViT-B-16.pt or a plain state dict "
            "of tensors"
        ) from None
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
    # torch wraps the cause in advice about weights_only=False, which must not be followed here
    text = str(error).rpartition("WeightsUnpickler error:")[2]
    detail = next((line.strip() for line in text.splitlines() if line.strip()), "")
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
