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

from workers.errors import UserError

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
        raw = self.archive.read(f"{self.root}/data/{key}")
        if len(raw) < numel * dtype.itemsize:
            raise pickle.UnpicklingError(f"storage {key} is truncated")
        return _Storage(torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8), dtype)


def _declared_tensors(archive: zipfile.ZipFile, root: str, qualname: str) -> list[str] | None:
    """``__parameters__ + __buffers__`` of a class as its archived source declares them."""
    module, _, name = qualname.rpartition(".")
    try:
        source = archive.read(f"{root}/code/{module.replace('.', '/')}.py").decode()
    except (KeyError, UnicodeDecodeError):
        return None
    for body in re.split(r"^class ", source, flags=re.M)[1:]:
        if not body.startswith(f"{name}("):
            continue
        found = [
            re.search(rf"^\s+{k} = (\[.*\])$", body, re.M)
            for k in ("__parameters__", "__buffers__")
        ]
        if all(found):
            return [n for m in found for n in ast.literal_eval(m.group(1))]
    return None


def _read_torchscript(archive: zipfile.ZipFile, root: str) -> dict[str, Any]:
    # Archives older than PyTorch 1.13 (OpenAI's among them) have no byteorder record.
    byteorder = f"{root}/byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder).decode() != sys.byteorder:
        raise pickle.UnpicklingError("the archive was written with the other byte order")
    tree = _TorchScriptUnpickler(archive, root, archive.read(f"{root}/data.pkl")).load()
    declared: dict[str, list[str] | None] = {}
    out: dict[str, Any] = {}

    def walk(obj: _TorchScriptObject, prefix: str) -> None:
        state = obj.state if isinstance(getattr(obj, "state", None), dict) else {}
        if obj.qualname not in declared:
            declared[obj.qualname] = _declared_tensors(archive, root, obj.qualname)
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
        names = archive.namelist()
    for name in names:
        root = name.removesuffix("/data.pkl")
        markers = (f"{root}/constants.pkl", f"{root}/code/")
        if root != name and "/" not in root and any(n.startswith(markers) for n in names):
            return root
    return None


def _torch_load(path: Path) -> Any:
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
    where = f"--clip-weights {path}"
    if not path.is_file():
        raise UserError(
            f"{where}: no such file; pass the path of OpenAI's ViT-B-16.pt or a state dict, "
            "or 'openai' on a machine with internet"
        )
    try:
        root = _torchscript_root(path)
        if root is not None:
            with zipfile.ZipFile(path) as archive:
                obj: Any = _read_torchscript(archive, root)
        else:
            obj = _torch_load(path)
    except _DisallowedGlobal as e:
        raise UserError(
            f"{where}: the file asks to run {e} while loading and this program refuses to "
            "execute code from a checkpoint; pass OpenAI's ViT-B-16.pt or a plain state dict "
            "of tensors"
        ) from None
    except Exception as e:  # untrusted bytes: any other failure means an unreadable file
        raise _corrupt(where, e) from None

    state = _unwrap(obj)
    if not isinstance(state, Mapping):
        raise UserError(f"{where}: holds a {type(state).__name__}, not a state dict; {_FIX}")
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    for key in _OPENAI_METADATA:
        state.pop(key, None)
    bad = next((k for k, v in state.items() if not torch.is_tensor(v)), None)
    if not state or bad is not None:
        problem = "is empty" if not state else f"has a non-tensor entry {bad!r}"
        raise UserError(f"{where}: the state dict {problem}; {_FIX}")
    return state


_FIX = "pass OpenAI's ViT-B-16.pt or a state dict of CLIP ViT-B/16 tensors"


def _corrupt(where: str, error: BaseException) -> UserError:
    # torch wraps the cause in advice about weights_only=False, which must not be followed here
    text = str(error).rpartition("WeightsUnpickler error:")[2]
    detail = next((line.strip() for line in text.splitlines() if line.strip()), "")
    detail = detail.split(". ")[0]
    detail = (detail[:120] + "...") if len(detail) > 120 else detail or type(error).__name__
    return UserError(
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
