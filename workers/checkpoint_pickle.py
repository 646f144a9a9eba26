"""A pickle reader for checkpoints that runs no code from them and bounds what they build.

A checkpoint's pickle is untrusted input. This unpickler (stdlib's pure-Python
``pickle._Unpickler`` with its risky opcodes replaced) only calls the handful of functions
below, each harmless, and refuses every other global. It also bounds what a small file can
make the reader build:

- **shared or cyclic containers**: a checkpoint's lists, dicts and module objects are never
  referenced twice, so fetching one again from the pickle's memo (or ``DUP``) is refused; a
  1 kB pickle of objects that reference one child twice, nested 20 deep, would otherwise
  name a million tensors. :func:`resolve` checks the whole tree again (identity functions
  can hand an object back twice): each container reached once, at most ``MAX_DEPTH`` deep;
- **copies and lengths**: functions that copy their argument (``set``, ``torch.Size``...)
  copy at most as many items in all as the pickle has bytes; no read asks for more bytes
  than the file has left, whatever length the pickle claims; protocol 5's bytearrays
  (made, zeroed, before they are read) are refused;
- **hash collisions**: dict keys and set members are strings, bytes, small ints, bools or
  None, whose hashes cannot be made to collide (n colliding keys cost n**2 steps);
- **tensors**: storages and tensors stay records (:class:`StorageRef`, :class:`TensorRecord`);
  each storage key is named with one element type and count, and takes that count times
  the element size in bytes (what ``torch.load`` allocates for it). A tensor must stay
  inside its storage: its size, stride and offset reach no byte past it, and the view holds
  no more bytes than the storage (no ``stride 0`` blow-up of a few bytes into 400 MB). Views
  of one storage may overlap (tied weights, slices), but each is one pickled record: their
  number is bounded by the pickle's size.

Two walks over the unpickled tree apply the tree and tensor checks: :func:`check` only
checks, given each storage's size (the file is then loaded by ``torch.load``);
:func:`resolve` also makes each tensor a view of its storage (for a TorchScript archive,
which ``workers/checkpoint.py`` reads itself).

Every refusal is an :class:`UnsafeCheckpoint` (or :class:`DisallowedGlobal` naming the
global), one sentence naming what is wrong and, for a tensor, its key.
"""

from __future__ import annotations

import _compat_pickle
import math
import pickle
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from typing import IO, Any, NamedTuple

import torch

# Containers nest this deep at most: a scripted open_clip ViT-B-16 and FeatUp's Lightning
# checkpoint both nest 7 deep (module objects' state dicts and containers counted).
MAX_DEPTH = 100
# Sizes, strides and offsets are int64 in torch.
_INT64 = 1 << 63

# "torch FloatStorage" etc. name a storage's dtype in TorchScript pickles. A fixed table:
# the legacy storage classes are deprecated, and reading their .dtype warns.
STORAGE_DTYPES: dict[str, torch.dtype] = {
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
STORAGE_DTYPES |= {str(dtype).removeprefix("torch."): dtype for dtype in STORAGE_DTYPES.values()}


class DisallowedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allowed few; the message is ``module.name``."""


class UnsafeCheckpoint(pickle.UnpicklingError):
    """The pickle would build something no checkpoint holds (shared or cyclic containers,
    a tensor outside its storage...); the message is one sentence saying what."""


class StorageRef(NamedTuple):
    """A storage as the pickle names it: its record ``key`` and the element type."""

    key: str
    dtype: torch.dtype


class TensorRecord:
    """A tensor as the pickle describes it, checked by :func:`check` or made a real tensor
    by :func:`resolve`. ``extra`` holds the other arguments of the calls that built it
    (requires_grad, hooks, metadata, a parameter's state): ``torch.load`` keeps them, so
    both walks check them too, though ``resolve`` drops them.

    Unhashable, so that no set or dict key can hold one where the walks cannot reach it.
    """

    __hash__ = None  # type: ignore[assignment]

    def __init__(
        self, storage: StorageRef, offset: Any, size: Any, stride: Any, extra: tuple
    ) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.extra = extra


class TorchScriptObject:
    """Inert stand-in for a ``__torch__.*`` object: it only keeps its pickled state."""

    qualname = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *extra: Any) -> Any:
    if not isinstance(storage, StorageRef):
        raise pickle.UnpicklingError("a tensor without a storage")
    return TensorRecord(storage, offset, size, stride, extra)


def _rebuild_parameter(data: Any, *requires_grad_hooks_state: Any) -> Any:
    if not isinstance(data, TensorRecord):
        raise pickle.UnpicklingError("a parameter without a tensor")
    data.extra = (*data.extra, *requires_grad_hooks_state)
    return data


def _ordered_dict(*args: Any) -> OrderedDict:
    # Pickle makes an OrderedDict empty and then sets its items; a copy is never asked for.
    if args:
        raise pickle.UnpicklingError("an OrderedDict built from arguments")
    return OrderedDict()


def _dict(value: Any) -> dict:
    if type(value) is not dict:
        raise pickle.UnpicklingError("a Counter of no dict")
    return value


def _number(value: Any) -> float | int:
    # complex() would parse a string of any length
    if type(value) not in (int, float):
        raise pickle.UnpicklingError("a complex number of no real part")
    return value


def _same_list(items: Any, *_type: Any) -> Any:
    # TorchScript's build_intlist & co. wrap a list just built: no copy needed.
    if not isinstance(items, list):
        raise pickle.UnpicklingError("a TorchScript list that is no list")
    return items


# The callables a pickle may reach, each harmless and none copying; __init__ adds the copying
# ones, which charge what they copy to the pickle's budget.
_SAFE_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch.jit._pickle", "restore_type_tag"): lambda value, _type: value,
    **{("torch.jit._pickle", f"build_{k}list"): _same_list for k in ("int", "double", "bool")},
    ("torch.jit._pickle", "build_tensorlist"): _same_list,
}

# Dict keys and set members are of these types (ints of 32 bits): their hashes cannot be
# made to collide, which would make inserting n keys take n**2 steps (a 280 kB pickle of
# ints that are multiples of 2**61 - 1 took 20 s, ten times as many would take hours).
_KEY_TYPES = (str, bytes, bool, type(None))
_INT32 = 1 << 31


def _keys(items: Any) -> Any:
    """``items`` if each is a key that hashes safely (see ``_KEY_TYPES``)."""
    for key in items:
        if type(key) not in _KEY_TYPES and not (type(key) is int and -_INT32 <= key < _INT32):
            raise UnsafeCheckpoint(
                f"its pickle has a dict key or set member {type(key).__name__} {key!r:.40} "
                "(only strings and small integers are read)"
            )
    return items


# Fetching one of these from the memo a second time is refused: a checkpoint never shares
# them, and shared ones let a small pickle build a tree exponentially larger (or a cycle).
_UNSHARED = (list, dict, set, bytearray, TorchScriptObject)


class _Capped:
    """``file`` read as a pickle reads it, never asked for more than the ``left`` bytes
    it has: a length in the pickle (a string's, a frame's) cannot make a read allocate
    more than the file holds."""

    def __init__(self, file: IO[bytes], left: int) -> None:
        self.file, self.left = file, max(left, 0)

    def read(self, n: int = -1) -> bytes:
        data = self.file.read(self.left if n < 0 else min(n, self.left))
        self.left -= len(data)
        return data

    def readline(self) -> bytes:
        data = self.file.readline(self.left)
        self.left -= len(data)
        return data


class RestrictedUnpickler(pickle._Unpickler):  # the pure-Python one: its opcodes can be hooked
    """Unpickle ``file`` (from its position to byte ``size``) into containers, scalars,
    ``StorageRef``s, ``TensorRecord``s and, with ``torchscript``, ``TorchScriptObject``s;
    nothing else.

    ``storages`` collects each storage key the pickle names with its element type and count;
    a key named again with another type or count is refused (torch.save and torch.jit.save
    name a storage alike each time; ``torch.load`` would build it as first named)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: IO[bytes], size: int, torchscript: bool = False) -> None:
        super().__init__(_Capped(file, size - file.tell()), encoding="utf-8")
        self.torchscript = torchscript
        self.classes: dict[str, type[TorchScriptObject]] = {}
        self.storages: dict[str, tuple[torch.dtype, int]] = {}
        self._budget = size + 1024  # items the copying functions may still copy
        self._globals: dict[tuple[str, str], Callable[..., Any]] = {
            **_SAFE_GLOBALS,
            ("builtins", "set"): lambda items=(): set(_keys(self._charge(items))),
            # a scheduler's milestones, from a dict whose keys were checked as it was read
            ("collections", "Counter"): lambda counts: Counter(self._charge(_dict(counts))),
            ("builtins", "complex"): lambda real=0.0, imag=0.0: complex(_number(real), imag),
            ("torch", "Size"): lambda items=(): torch.Size(self._charge(items)),
            ("torch", "device"): lambda *args: torch.device(*self._charge(args)),
            ("_codecs", "encode"): lambda text, encoding="utf-8": self._encode(text, encoding),
        }
        self._callables = {id(f) for f in self._globals.values()}

    def _charge(self, items: Any) -> Any:
        if not isinstance(items, (list, tuple, str, dict)):
            raise pickle.UnpicklingError(f"a copy of a {type(items).__name__}")
        self._budget -= len(items)
        if self._budget < 0:
            raise UnsafeCheckpoint("its pickle copies more items than it holds bytes")
        return items

    def _encode(self, text: Any, encoding: Any) -> bytes:
        if not isinstance(text, str) or encoding != "latin1":
            raise pickle.UnpicklingError("_codecs.encode of no latin1 text")
        return self._charge(text).encode("latin1")

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3:  # Python 3 writes some names as Python 2 had them (__builtin__.set)
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if self.torchscript and (module == "__torch__" or module.startswith("__torch__.")):
            qualname = f"{module}.{name}"
            if qualname not in self.classes:
                attrs = {"qualname": qualname}
                self.classes[qualname] = type(name, (TorchScriptObject,), attrs)
            return self.classes[qualname]
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        if (module, name) in self._globals:
            return self._globals[module, name]
        raise DisallowedGlobal(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> StorageRef:
        # ("storage", type, key, location, numel), with a view record (None) in the legacy format
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError("an unknown persistent id")
        dtype, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(dtype, torch.dtype) or not isinstance(key, str):
            raise pickle.UnpicklingError(f"a storage of unknown type {dtype!r}")
        if type(numel) is not int or not 0 <= numel < _INT64 or pid[5:] not in ((), (None,)):
            raise pickle.UnpicklingError(f"storage {key} has a malformed size or view")
        if self.storages.setdefault(key, (dtype, numel)) != (dtype, numel):
            raise UnsafeCheckpoint(f"its pickle names storage {key} with two types or sizes")
        return StorageRef(key, dtype)

    def storage_bytes(self, held: Callable[[str], int]) -> dict[str, int]:
        """The size in bytes of each storage the pickle named (its element count times the
        element size), after checking that the file holds as many, ``held(key)``."""
        out = {}
        for key, (dtype, numel) in self.storages.items():
            out[key] = numel * dtype.itemsize
            if held(key) < out[key]:
                raise pickle.UnpicklingError(f"storage {key} is truncated")
        return out

    def _push_memo(self, index: int) -> None:
        if index not in self.memo:
            raise pickle.UnpicklingError(f"memo value not found at index {index}")
        self._push_again(self.memo[index])

    def _push_again(self, value: Any) -> None:
        if isinstance(value, _UNSHARED):
            raise UnsafeCheckpoint(
                f"its pickle refers to one {type(value).__name__} twice (shared or cyclic "
                "containers, which no checkpoint has, can make a small file build an "
                "unbounded tree)"
            )
        self.append(value)

    def _get(self) -> None:
        self._push_memo(int(self.readline()[:-1]))

    def _binget(self) -> None:
        self._push_memo(self.read(1)[0])

    def _long_binget(self) -> None:
        self._push_memo(int.from_bytes(self.read(4), "little"))

    def _dup(self) -> None:
        self._push_again(self.stack[-1])

    def _reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if id(func) not in self._callables or not isinstance(args, tuple):
            raise pickle.UnpicklingError(f"a call of {type(func).__name__} {func!r:.60}")
        self.stack[-1] = func(*args)

    def _newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if not (isinstance(cls, type) and issubclass(cls, TorchScriptObject)) or args != ():
            raise pickle.UnpicklingError(f"a new object of {cls!r:.60}")
        self.append(cls())

    def _build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, TorchScriptObject):
            inst.__setstate__(state)
        elif type(inst) is OrderedDict and isinstance(state, dict):  # a state dict's _metadata
            if not all(isinstance(k, str) for k in state):
                raise pickle.UnpicklingError("an OrderedDict attribute not named by a string")
            inst.__dict__.update(state)
        else:
            raise pickle.UnpicklingError(f"the state of a {type(inst).__name__}")

    def _refuse(self) -> None:
        raise pickle.UnpicklingError("a pickle opcode no checkpoint uses")

    def _into(self, kind: type) -> Any:
        if type(self.stack[-1]) is not kind and not (
            kind is dict and type(self.stack[-1]) is OrderedDict
        ):
            raise pickle.UnpicklingError(f"items added to a {type(self.stack[-1]).__name__}")
        return self.stack[-1]

    def _append(self) -> None:
        item = self.stack.pop()
        self._into(list).append(item)

    def _appends(self) -> None:
        items = self.pop_mark()
        self._into(list).extend(items)

    def _setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        self._into(dict)[_keys((key,))[0]] = value

    def _setitems(self) -> None:
        items = self.pop_mark()
        target = self._into(dict)
        if len(items) % 2:
            raise pickle.UnpicklingError("a dict item without a value")
        target.update(zip(_keys(items[::2]), items[1::2], strict=True))

    def _dict(self) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise pickle.UnpicklingError("a dict item without a value")
        self.append(dict(zip(_keys(items[::2]), items[1::2], strict=True)))

    def _additems(self) -> None:
        items = self.pop_mark()
        self._into(set).update(_keys(items))

    def _frozenset(self) -> None:
        items = self.pop_mark()  # first: it replaces self.stack and self.append
        self.append(frozenset(_keys(items)))


RestrictedUnpickler.dispatch |= {
    op[0]: method
    for op, method in (
        (pickle.GET, RestrictedUnpickler._get),
        (pickle.BINGET, RestrictedUnpickler._binget),
        (pickle.LONG_BINGET, RestrictedUnpickler._long_binget),
        (pickle.DUP, RestrictedUnpickler._dup),
        (pickle.REDUCE, RestrictedUnpickler._reduce),
        (pickle.NEWOBJ, RestrictedUnpickler._newobj),
        (pickle.BUILD, RestrictedUnpickler._build),
        (pickle.APPEND, RestrictedUnpickler._append),
        (pickle.APPENDS, RestrictedUnpickler._appends),
        (pickle.SETITEM, RestrictedUnpickler._setitem),
        (pickle.SETITEMS, RestrictedUnpickler._setitems),
        (pickle.ADDITEMS, RestrictedUnpickler._additems),
        (pickle.DICT, RestrictedUnpickler._dict),
        (pickle.FROZENSET, RestrictedUnpickler._frozenset),
        # object creation of protocols 0 and 1, keyword arguments, text persistent ids, and
        # protocol 5's bytearray, which Python makes (zeroed) at its claimed length before
        # reading its bytes
        *(
            (op, RestrictedUnpickler._refuse)
            for op in (pickle.INST, pickle.OBJ, pickle.NEWOBJ_EX, pickle.PERSID, pickle.BYTEARRAY8)
        ),
    )
}


def _key(path: tuple[Any, ...]) -> str:
    name = ".".join(str(k) for k in path) or "(the top)"
    return repr(name if len(name) <= 100 else name[:100] + "...")


class _Resolver:
    """One pass over an unpickled tree: each container once, each tensor record checked
    against its storage's size in bytes (``nbytes``) and, given ``storages``, made a view
    of it."""

    def __init__(
        self, nbytes: Mapping[str, int], storages: Mapping[str, torch.UntypedStorage] | None
    ) -> None:
        self.nbytes, self.storages = nbytes, storages
        self.tensors: dict[int, Any] = {}  # by id of the record (tied weights)
        self.tuples: dict[int, tuple] = {}  # by id: tuples may be shared, and are done once
        self.seen: set[int] = set()
        self.keep: list[Any] = []  # keeps what `seen` names alive, so that no id is reused

    def enter(self, obj: Any, path: tuple[Any, ...]) -> None:
        if id(obj) in self.seen:
            raise UnsafeCheckpoint(
                f"{_key(path)} refers to a {type(obj).__name__} reached already "
                "(shared or cyclic containers, which no checkpoint has)"
            )
        self.seen.add(id(obj))
        self.keep.append(obj)
        if len(path) > MAX_DEPTH:
            raise UnsafeCheckpoint(f"its containers nest deeper than {MAX_DEPTH} levels")

    def __call__(self, obj: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(obj, TensorRecord):
            if id(obj) not in self.tensors:
                self.tensors[id(obj)] = self.tensor(obj, path)
                self.keep.append(obj)
                self(obj.extra, path)
            return self.tensors[id(obj)]
        if isinstance(obj, tuple) and not isinstance(obj, torch.Size):
            if id(obj) not in self.tuples:
                if len(path) > MAX_DEPTH:
                    raise UnsafeCheckpoint(f"its containers nest deeper than {MAX_DEPTH} levels")
                items = [self(v, (*path, i)) for i, v in enumerate(obj)]
                same = all(a is b for a, b in zip(items, obj, strict=True))
                self.tuples[id(obj)] = obj if same else tuple(items)
                self.keep.append(obj)
            return self.tuples[id(obj)]
        if isinstance(obj, dict):
            self.enter(obj, path)
            for k, v in obj.items():
                obj[k] = self(v, (*path, k))
        elif isinstance(obj, list):
            self.enter(obj, path)
            obj[:] = [self(v, (*path, i)) for i, v in enumerate(obj)]
        elif isinstance(obj, (set, bytearray)):
            self.enter(obj, path)
        elif isinstance(obj, TorchScriptObject):
            self.enter(obj, path)
            if hasattr(obj, "state"):
                obj.state = self(obj.state, path)
        return obj

    def tensor(self, record: TensorRecord, path: tuple[Any, ...]) -> Any:
        """``record`` as a view of its storage (given ``storages``; else the record itself)
        once checked to lie inside it."""
        dtype, nbytes = record.storage.dtype, self.nbytes[record.storage.key]
        offset, size, stride = record.offset, record.size, record.stride
        what = f"tensor {_key(path)}"
        if not (
            isinstance(size, (tuple, list))
            and isinstance(stride, (tuple, list))
            and len(size) == len(stride)
            and all(type(v) is int for v in (offset, *size, *stride))
        ):
            raise UnsafeCheckpoint(f"{what} has a malformed size, stride or offset")
        if any(v < 0 for v in (offset, *size, *stride)):
            raise UnsafeCheckpoint(
                f"{what} has a negative size, stride or offset (size {tuple(size)}, "
                f"stride {tuple(stride)}, offset {offset})"
            )
        if any(v >= _INT64 for v in (offset, *size, *stride)):
            raise UnsafeCheckpoint(f"{what} has a size, stride or offset beyond 64 bits")
        numel = math.prod(size)
        # elements the view spans in its storage: from offset to its last element
        last = sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        span = offset + (last + 1 if numel else 0)
        need = max(numel, span) * dtype.itemsize
        if need > nbytes:
            raise UnsafeCheckpoint(
                f"{what} of size {tuple(size)}, stride {tuple(stride)} and offset {offset} "
                f"needs {need} bytes ({dtype}) but its storage holds {nbytes}"
            )
        if self.storages is None:
            return record
        storage = self.storages[record.storage.key]
        return torch.empty(0, dtype=dtype).set_(storage, offset, size, stride)


def check(tree: Any, nbytes: Mapping[str, int]) -> None:
    """Raise what :func:`resolve` would raise on ``tree``, its storages holding
    ``nbytes[key]`` bytes each, building nothing: the tree is left as it is."""
    _Resolver(nbytes, None)(tree, ())


def resolve(tree: Any, storages: Mapping[str, torch.UntypedStorage]) -> Any:
    """``tree`` with each ``TensorRecord`` replaced by a tensor viewing its storage (one
    tensor per record: a record reached twice, like tied weights, stays one tensor).

    Raises :class:`UnsafeCheckpoint` naming the key of a tensor that reaches outside its
    storage or holds more bytes than it, and for a container reached twice or nested deeper
    than ``MAX_DEPTH``. Time and memory are linear in the tree's size.
    """
    return _Resolver({key: s.nbytes() for key, s in storages.items()}, storages)(tree, ())
