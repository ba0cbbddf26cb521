"""Safe reading of PyTorch / PyTorch Lightning checkpoints (``.ckpt``, ``.pt``, ``.pth``, ``.bin``) without running
any pickled code, and their conversion to ``.safetensors``.

Entry points
------------
:func:`load_checkpoint`         the whole checkpoint object (tensors real, unknown objects as inert :class:`StubObject`).
:func:`read_state_dict`         ``{name: tensor}`` of a checkpoint (Lightning ``state_dict``, ``model``/``module`` or a
                                plain state dict) or of a ``.safetensors`` file, optionally only keys with a prefix.
:func:`convert_to_safetensors`  checkpoint -> ``.safetensors`` (atomic write, metadata, a small report).
CLI                             ``python -m vscene_engine convert-mvsplat re10k.ckpt --out re10k.safetensors
                                [--prefix encoder.] [--all-keys]`` (:func:`add_parser`).

Formats: the zip format of ``torch.save`` (torch >= 1.6: ``<dir>/data.pkl`` + ``<dir>/data/<key>`` storages,
``byteorder`` honoured), the legacy pickle-stream format of ``torch.save(..., _use_new_zipfile_serialization=False)``
and plain pickles. The tar format of torch < 0.4 and TorchScript archives are refused with a clear message. Storages
are always materialised on the CPU.

Safety model
------------
The pickle is read by :class:`RestrictedUnpickler`, built on the pure-Python ``pickle._Unpickler`` so that *every*
opcode that could call or mutate something (GLOBAL/STACK_GLOBAL, REDUCE, NEWOBJ/NEWOBJ_EX, OBJ/INST, BUILD,
APPEND(S), SETITEM(S), ADDITEMS, EXT*, PERSID) goes through our code, not only ``find_class``. Nothing named in the
pickle is ever imported, and no object of the pickle is ever called except our own reconstructors. A global resolves
to, in this order:

1. an **allow-listed** name: torch's tensor/parameter reconstructors, storage classes, dtypes, ``torch.Size``,
   ``torch.device``, ``collections.OrderedDict`` (``defaultdict`` becomes a plain dict), harmless builtin data types
   (``set``, ``frozenset``, ``complex``, ``slice``, ``range``, ``bytes``, ``bytearray`` ...), ``_codecs.encode`` for
   latin-1 bytes, and numpy's ``dtype``/``scalar``/``_reconstruct``/``ndarray`` (plain numeric dtypes only). Each is
   mapped to a reimplementation here that validates its arguments and uses only safe torch/numpy calls
   (``torch.empty(0, dtype).set_(storage, offset, size, stride)`` with a bounds check, ``np.frombuffer``);
2. **refused** with :class:`UnsafeCheckpointError`: any name from a module that can reach the OS, the interpreter or
   code (``os``, ``posix``, ``nt``, ``subprocess``, ``shutil``, ``sys``, ``io``, ``importlib``, ``runpy``, ``pickle``,
   ``codecs``, ``socket``, ``functools``, ``operator``, ``ctypes``, ``types``, ``builtins`` other than the data types
   above (``eval``, ``exec``, ``open``, ``getattr``, ``__import__``, ``compile`` ...), ...), and function-like
   (not capitalised) names of ``torch``/``numpy`` that are not allow-listed (``torch.load``, ``numpy.load`` ...).
   The whole file is refused, even when the name would only have been referenced. (Exceptions that are plain data
   and become stubs: ``types.SimpleNamespace`` and numpy's RNG-state constructors.);
3. otherwise an **inert stub** (:class:`StubGlobal`): classes of omegaconf, dataclasses, ``pathlib``, ``enum`` or the
   training code. REDUCE/NEWOBJ/BUILD of a stub only record their arguments in a :class:`StubObject`
   (``module``, ``name``, ``args``, ``kwargs``, ``state``, ``items``, ``dict_items``) - plain data, nothing of the
   original class is imported or run.

So: allow-listed names are re-implemented, dangerous ones refuse the file, everything else becomes an inert record;
nothing from the file is ever executed either way.
"""
from __future__ import annotations

import _compat_pickle
import io
import math
import pickle
import re
import struct
import sys
import tarfile
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import torch

__all__ = [
    "UnsafeCheckpointError", "CheckpointError", "StubGlobal", "StubObject", "RestrictedUnpickler",
    "load_checkpoint", "read_state_dict", "convert_to_safetensors", "add_parser", "state_dict_mismatch"]

CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class UnsafeCheckpointError(ValueError):
    """The checkpoint's pickle references a global that can run code: the file is refused, nothing was executed."""


class CheckpointError(ValueError):
    """The file is not a readable checkpoint (missing, truncated, corrupt, unsupported format, no tensors)."""


# ------------------------------------------------------------------------------------------------ inert placeholders
class StubGlobal:
    """Inert stand-in for a global (class or function) named in the pickle; never imported, never called."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        return f"<stub global {self.qualname}>"

    def __reduce__(self):  # stubs pickle as plain data, never as the original global
        return (StubGlobal, (self.module, self.name))


class StubObject:
    """Inert record of an object of a class that was not loaded: how the pickle built it, as plain data.

    ``args``/``kwargs``: constructor arguments (REDUCE, NEWOBJ); ``state``: the BUILD state (usually the instance
    ``__dict__``); ``items``/``dict_items``: what APPEND(S)/SETITEM(S) added (list/dict subclasses)."""

    __slots__ = ("module", "name", "args", "kwargs", "state", "items", "dict_items")

    def __init__(self, module: str, name: str, args=(), kwargs=None, state=None):
        self.module, self.name = module, name
        self.args, self.kwargs, self.state = tuple(args), dict(kwargs or {}), state
        self.items: list = []
        self.dict_items: dict = {}

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        parts = []
        if self.args:
            parts.append(f"args={self.args!r}")
        if self.kwargs:
            parts.append(f"kwargs={self.kwargs!r}")
        if self.state is not None:
            parts.append(f"state={self.state!r}")
        if self.items:
            parts.append(f"items={self.items!r}")
        if self.dict_items:
            parts.append(f"dict_items={self.dict_items!r}")
        s = repr(", ".join(parts))[1:-1]
        return f"<stub {self.qualname}{' ' + s[:200] if s else ''}>"


class _SafeFn:
    """One of our own reimplemented reconstructors, standing for an allow-listed global."""

    __slots__ = ("qualname", "fn")

    def __init__(self, qualname: str, fn):
        self.qualname, self.fn = qualname, fn

    def __repr__(self) -> str:
        return f"<safe reconstructor {self.qualname}>"


class _StorageType:
    """A storage class global (``torch.FloatStorage``, ``torch.storage.UntypedStorage`` ...): just its dtype."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: torch.dtype):
        self.name, self.dtype = name, dtype

    def __repr__(self) -> str:
        return f"<storage type {self.name}>"


class _Storage:
    """A storage read from the file: untyped CPU bytes + the dtype it was saved with."""

    __slots__ = ("untyped", "dtype")

    def __init__(self, untyped: torch.UntypedStorage, dtype: torch.dtype):
        self.untyped, self.dtype = untyped, dtype

    def __repr__(self) -> str:
        return f"<storage {self.dtype} {self.untyped.nbytes()} bytes>"


class _TensorType:  # markers for torch.Tensor / torch.nn.Parameter used as data (e.g. in _rebuild_from_type_v2)
    __slots__ = ("qualname", "parameter")

    def __init__(self, qualname: str, parameter: bool):
        self.qualname, self.parameter = qualname, parameter

    def __repr__(self) -> str:
        return f"<type {self.qualname}>"


class _NpDtypeProxy:  # np.dtype(...) between its REDUCE and its BUILD
    __slots__ = ("args",)

    def __init__(self, args):
        self.args = args


class _NpArrayProxy:  # numpy _reconstruct(ndarray, ...) between its REDUCE and its BUILD
    __slots__ = ("args",)

    def __init__(self, args):
        self.args = args


# ------------------------------------------------------------------------------------------------ policy tables
_DENY_MODULES = frozenset("""
os posix nt posixpath ntpath genericpath subprocess _posixsubprocess shutil sys io _io importlib runpy pickle _pickle
pickletools codecs _codecs socket _socket ssl webbrowser functools _functools operator _operator ctypes _ctypes
marshal types code codeop inspect threading _thread multiprocessing concurrent signal _signal pty tty tempfile glob
asyncio http urllib ftplib smtplib telnetlib poplib imaplib xmlrpc pdb bdb timeit trace cProfile profile gc weakref
_weakref select selectors mmap resource fcntl pwd grp zipimport pkgutil site sysconfig distutils setuptools pip
platform getpass builtins __builtin__ copyreg copy_reg dill cloudpickle joblib shelve dbm sqlite3 zipfile tarfile
lzma bz2 gzip zlib logging atexit faulthandler readline rlcompleter ensurepip venv
""".split())

# data-only names from otherwise denied/refused modules: they become inert stubs like any other class
_STUB_OK = {("types", "SimpleNamespace")}
_STUB_OK_MODULES = {"numpy.random._pickle"}  # numpy RNG state constructors (data only; never called here)

_DTYPE_NAMES = """float32 float float64 double float16 half bfloat16 complex32 chalf complex64 cfloat complex128 cdouble
uint8 int8 int16 short int32 int int64 long bool uint16 uint32 uint64 float8_e4m3fn float8_e5m2 float8_e4m3fnuz
float8_e5m2fnuz float8_e8m0fnu float4_e2m1fn_x2 bits8 bits16 bits1x8 bits2x4 bits4x2""".split()

_STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64", "UntypedStorage": "uint8",
}

_SAFE_NP_DTYPE = re.compile(r"^(b1|[iu][1248]|f[248]|f16|c8|c16|c32|U\d+|S\d+)$")


def _unsafe(module: str, name: str, source: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"refusing to load {source}: its pickle references {module}.{name}, which can run code or reach the "
        f"system, so this is not a plain checkpoint. Do not load it from untrusted sources; if you trust it, convert "
        f"it with the official code instead (torch.load in the model's own repository). Nothing was executed.")


# ------------------------------------------------------------------------------------------------ tensor rebuilders
def _int_tuple(v, what: str) -> tuple:
    if isinstance(v, torch.Size):
        v = tuple(v)
    if not isinstance(v, (tuple, list)) or not all(type(x) is int for x in v):
        raise CheckpointError(f"malformed tensor record: {what} {v!r} is not a tuple of ints")
    return tuple(v)


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _make_tensor(storage, offset, size, stride, dtype: torch.dtype, requires_grad=False, metadata=None):
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"malformed tensor record: storage is a {type(storage).__name__}, not a file storage")
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"malformed tensor record: dtype {dtype!r}")
    if type(offset) is not int or offset < 0:
        raise CheckpointError(f"malformed tensor record: storage offset {offset!r}")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise CheckpointError(f"malformed tensor record: size {size} / stride {stride}")
    esize = _element_size(dtype)
    if all(s > 0 for s in size):  # bounds check (torch checks too; we do not rely on it)
        last = offset + sum((s - 1) * st for s, st in zip(size, stride))
        if (last + 1) * esize > storage.untyped.nbytes():
            raise CheckpointError(f"malformed tensor record: size {size}, stride {stride}, offset {offset} reach past "
                                  f"the end of a {storage.untyped.nbytes()}-byte storage")
    t = torch.empty((0,), dtype=dtype).set_(storage.untyped, offset, size, stride)
    if metadata:
        if not (isinstance(metadata, dict) and set(metadata) <= {"conj", "neg"}
                and all(type(v) is bool for v in metadata.values())):
            raise CheckpointError(f"malformed tensor metadata {metadata!r}")
        torch._C._set_tensor_metadata(t, dict(metadata))
    if requires_grad is True and (t.is_floating_point() or t.is_complex()):
        t.requires_grad_(True)
    return t


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _make_tensor(storage, storage_offset, size, stride, getattr(storage, "dtype", None))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    # backward hooks are never installed (torch only keeps them for BC; they would be stubs here anyway)
    return _make_tensor(storage, storage_offset, size, stride, getattr(storage, "dtype", None), requires_grad,
                        metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    return _make_tensor(storage, storage_offset, size, stride, dtype, requires_grad, metadata)


def _as_parameter(data, requires_grad=True):
    if not isinstance(data, torch.Tensor):
        raise CheckpointError(f"malformed parameter record: data is a {type(data).__name__}")
    grad = requires_grad is True and (data.is_floating_point() or data.is_complex())
    return torch.nn.Parameter(data.detach(), requires_grad=grad)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None):
    return _as_parameter(data, requires_grad)


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return _as_parameter(data, requires_grad)  # python attributes (state) are not restored onto tensors


def _rebuild_device_tensor_from_cpu_tensor(data, dtype=None, device=None, requires_grad=False):
    if not isinstance(data, torch.Tensor):
        raise CheckpointError(f"malformed tensor record: {type(data).__name__}")
    return data  # stays on the CPU


def _rebuild_from_type_v2(func, new_type, args, state):
    if not isinstance(func, _SafeFn) or func.fn not in _TENSOR_FNS:
        raise CheckpointError(f"unsupported tensor reconstruction through {func!r}")
    if type(args) is not tuple:
        raise CheckpointError("malformed tensor record: arguments are not a tuple")
    t = func.fn(*args)
    if isinstance(new_type, _TensorType) and new_type.parameter and not isinstance(t, torch.nn.Parameter):
        t = _as_parameter(t, t.requires_grad)
    return t  # tensor subclasses (new_type a stub) come back as plain tensors; their python state is dropped


def _rebuild_from_type(func, type_, args, dict_):
    return _rebuild_from_type_v2(func, type_, args, dict_)


def _torch_size(*args):
    if len(args) == 0:
        return torch.Size()
    if len(args) == 1:
        return torch.Size(_int_tuple(args[0], "size"))
    raise CheckpointError(f"malformed torch.Size{args!r}")


def _torch_device(*args):
    if not (1 <= len(args) <= 2 and isinstance(args[0], str) and all(type(a) is int for a in args[1:])):
        raise CheckpointError(f"malformed torch.device{args!r}")
    return torch.device(*args)


_TENSOR_FNS = {_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter,
               _rebuild_parameter_with_state, _rebuild_device_tensor_from_cpu_tensor}


# ------------------------------------------------------------------------------------------------ builtin data types
def _check_seq(v, what):
    if not isinstance(v, (list, tuple, set, frozenset, dict, str, bytes, bytearray)):
        raise CheckpointError(f"malformed pickle: {what}() of a {type(v).__name__}")
    return v


def _container(t):
    def make(*args):
        if len(args) > 1:
            raise CheckpointError(f"malformed pickle: {t.__name__}{args!r}")
        return t(_check_seq(args[0], t.__name__)) if args else t()
    return make


def _plain_dict(*args):  # collections.defaultdict(factory) -> a plain dict (the factory is never kept or called)
    return {}


def _safe_complex(*args):
    if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args) or len(args) > 2:
        raise CheckpointError(f"malformed complex{args!r}")
    return complex(*args)


def _safe_bytes_like(t):
    def make(*args):
        if not args:
            return t()
        if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1", "utf-8", "utf8"):
            return t(args[0].encode(args[1]))
        if len(args) == 1 and isinstance(args[0], (bytes, bytearray, list, tuple)):
            return t(args[0])
        raise CheckpointError(f"malformed {t.__name__}{args!r}")
    return make


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise CheckpointError(f"unsupported codecs.encode({type(obj).__name__}, {encoding!r}, {errors!r})")
    return obj.encode("latin1")


def _safe_slice(*args):
    if not all(a is None or type(a) is int for a in args) or not 1 <= len(args) <= 3:
        raise CheckpointError(f"malformed slice{args!r}")
    return slice(*args)


def _safe_range(*args):
    if not all(type(a) is int for a in args) or not 1 <= len(args) <= 3:
        raise CheckpointError(f"malformed range{args!r}")
    return range(*args)


def _safe_object(*args):
    return object()


# types that may appear as data (e.g. omegaconf's ref_type=dict) and their safe constructors for REDUCE/NEWOBJ
_TYPE_CTORS = {
    dict: _container(dict), list: _container(list), tuple: _container(tuple), set: _container(set),
    frozenset: _container(frozenset), OrderedDict: _container(OrderedDict), complex: _safe_complex,
    bytes: _safe_bytes_like(bytes), bytearray: _safe_bytes_like(bytearray), slice: _safe_slice, range: _safe_range,
    object: _safe_object,
}
_PLAIN_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "NoneType": type(None)}


# ------------------------------------------------------------------------------------------------ numpy (data only)
def _np():
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return None
    return np


def _np_dtype_new(*args):
    return _NpDtypeProxy(args)


def _np_dtype_from(proxy_args, state):
    """A real numpy dtype for plain numeric/string dtypes; None for anything else (object, structured, datetime)."""
    np = _np()
    if np is None or not proxy_args or not isinstance(proxy_args[0], str):
        return None
    name = proxy_args[0]
    if not _SAFE_NP_DTYPE.match(name):
        return None
    order = "="
    if state is not None:
        if not (isinstance(state, tuple) and len(state) >= 8 and state[1] in ("<", ">", "|", "=")
                and state[2] is None and state[3] is None and state[4] is None):
            return None
        order = state[1]
    dt = np.dtype(name)
    return dt.newbyteorder(order) if order in "<>" else dt


def _np_resolve_dtype(dt):
    np = _np()
    if np is not None and isinstance(dt, np.dtype):
        return dt if dt.kind in "biufcUS" and dt.fields is None and dt.subdtype is None else None
    if isinstance(dt, _NpDtypeProxy):
        return _np_dtype_from(dt.args, None)
    return None


def _np_scalar(dtype, data=None):
    dt = _np_resolve_dtype(dtype)
    if dt is None or not isinstance(data, bytes) or len(data) != dt.itemsize:
        return StubObject("numpy", "scalar", (dtype, data))
    return _np().frombuffer(data, dtype=dt)[0]


def _np_reconstruct(*args):
    return _NpArrayProxy(args)


def _np_array_from(proxy_args, state):
    np = _np()
    if np is None or not (isinstance(state, tuple) and len(state) == 5):
        return None
    _version, shape, dtype, fortran, raw = state
    dt = _np_resolve_dtype(dtype)
    if dt is None or not isinstance(raw, (bytes, bytearray)) or type(fortran) is not bool:
        return None
    try:
        shape = _int_tuple(shape, "shape")
    except CheckpointError:
        return None
    if any(s < 0 for s in shape) or math.prod(shape) * dt.itemsize != len(raw):
        return None
    order = "F" if fortran else "C"
    return np.frombuffer(bytes(raw), dtype=dt).reshape(shape, order=order).copy(order=order)


def _np_frombuffer(buf, dtype, shape, order):  # numpy's protocol-5 reconstructor
    dt = _np_resolve_dtype(dtype)
    np = _np()
    try:
        shape = _int_tuple(shape, "shape")
    except CheckpointError:
        shape = None
    if (dt is None or shape is None or not isinstance(buf, (bytes, bytearray)) or order not in ("C", "F")
            or math.prod(shape) * dt.itemsize != len(buf)):
        return StubObject("numpy", "_frombuffer", (buf, dtype, shape, order))
    return np.frombuffer(bytes(buf), dtype=dt).reshape(shape, order=order).copy(order=order)


# ------------------------------------------------------------------------------------------------ the allow-list
def _build_allowed() -> dict:
    a: dict = {}
    tensor_fns = {"_rebuild_tensor": _rebuild_tensor, "_rebuild_tensor_v2": _rebuild_tensor_v2,
                  "_rebuild_tensor_v3": _rebuild_tensor_v3, "_rebuild_parameter": _rebuild_parameter,
                  "_rebuild_parameter_with_state": _rebuild_parameter_with_state,
                  "_rebuild_device_tensor_from_cpu_tensor": _rebuild_device_tensor_from_cpu_tensor}
    for n, fn in tensor_fns.items():
        a[("torch._utils", n)] = _SafeFn(f"torch._utils.{n}", fn)
    for mod in ("torch._tensor", "torch.tensor"):
        a[(mod, "_rebuild_from_type_v2")] = _SafeFn(f"{mod}._rebuild_from_type_v2", _rebuild_from_type_v2)
        a[(mod, "_rebuild_from_type")] = _SafeFn(f"{mod}._rebuild_from_type", _rebuild_from_type)
    for mod in ("torch", "torch._tensor", "torch.tensor"):
        a[(mod, "Tensor")] = _TensorType("torch.Tensor", False)
    for mod in ("torch.nn.parameter", "torch.nn"):
        a[(mod, "Parameter")] = _TensorType("torch.nn.Parameter", True)
    for name, dt in _STORAGE_DTYPES.items():
        for mod in ("torch", "torch.cuda", "torch.storage"):
            a[(mod, name)] = _StorageType(name, getattr(torch, dt))
    for n in _DTYPE_NAMES:
        dt = getattr(torch, n, None)
        if isinstance(dt, torch.dtype):
            a[("torch", n)] = dt
    a[("torch", "Size")] = _SafeFn("torch.Size", _torch_size)
    a[("torch", "device")] = _SafeFn("torch.device", _torch_device)
    a[("torch.storage", "_load_from_bytes")] = _SafeFn("torch.storage._load_from_bytes", _load_from_bytes)
    a[("collections", "OrderedDict")] = OrderedDict
    a[("collections", "defaultdict")] = _SafeFn("collections.defaultdict", _plain_dict)
    for t in (dict, list, tuple, set, frozenset, complex, bytes, bytearray, slice, range, object):
        a[("builtins", t.__name__)] = t
    for n, t in _PLAIN_TYPES.items():
        a[("builtins", n)] = t
    a[("_codecs", "encode")] = a[("codecs", "encode")] = _SafeFn("_codecs.encode", _codecs_encode)
    a[("copyreg", "_reconstructor")] = _SafeFn("copyreg._reconstructor", None)  # both handled in _call
    a[("copyreg", "__newobj__")] = _SafeFn("copyreg.__newobj__", None)
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        a[(mod, "scalar")] = _SafeFn(f"{mod}.scalar", _np_scalar)
        a[(mod, "_reconstruct")] = _SafeFn(f"{mod}._reconstruct", _np_reconstruct)
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        a[(mod, "_frombuffer")] = _SafeFn(f"{mod}._frombuffer", _np_frombuffer)
    a[("numpy", "dtype")] = _SafeFn("numpy.dtype", _np_dtype_new)
    a[("numpy", "ndarray")] = StubGlobal("numpy", "ndarray")  # only meaningful as _reconstruct's first argument
    return a


# ------------------------------------------------------------------------------------------------ the unpickler
class RestrictedUnpickler(pickle._Unpickler):
    """Unpickler that never imports or calls anything named in the pickle (see the module docstring).

    ``storage_loader(storage_type: _StorageType, key, location, numel, view_metadata) -> _Storage`` materialises the
    persistent storages of torch's formats; without it a pickle with persistent ids is refused."""

    _allowed: dict = {}

    def __init__(self, file, storage_loader=None, source: str = "checkpoint"):
        super().__init__(file, encoding="utf-8")
        self._storage_loader = storage_loader
        self._source = source
        self._stubs: dict = {}
        if not RestrictedUnpickler._allowed:
            RestrictedUnpickler._allowed = _build_allowed()

    # -- globals
    def find_class(self, module, name):
        if not isinstance(module, str) or not isinstance(name, str):
            raise CheckpointError("malformed pickle: global names must be strings")
        if self.proto < 3:  # python 2 names (pure data mapping)
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        hit = self._allowed.get((module, name))
        if hit is not None:
            return hit
        top = module.split(".")[0]
        if (module, name) not in _STUB_OK and module not in _STUB_OK_MODULES:
            if top in _DENY_MODULES or module in _DENY_MODULES:
                raise _unsafe(module, name, self._source)
            if top in ("torch", "numpy", "safetensors"):
                leaf = name.split(".")[-1]
                if module == "torch._utils" and leaf.startswith("_rebuild_"):
                    raise CheckpointError(f"{self._source}: unsupported tensor kind ({module}.{name}); only dense "
                                          f"tensors can be read safely")
                if not leaf.lstrip("_")[:1].isupper():  # function-like names of these libraries: refuse
                    raise _unsafe(module, name, self._source)
        key = (module, name)
        stub = self._stubs.get(key)
        if stub is None:
            stub = self._stubs[key] = StubGlobal(module, name)
        return stub

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid:
            raise CheckpointError(f"malformed pickle: persistent id {pid!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module" and len(pid) >= 2:  # legacy format: (module class, source file, source)
            return pid[1]
        if kind != "storage" or len(pid) not in (5, 6):
            raise CheckpointError(f"malformed pickle: persistent id {pid[:1]!r}")
        if self._storage_loader is None:
            raise CheckpointError("malformed pickle: a tensor storage outside a torch checkpoint")
        stype, key, location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(stype, _StorageType):
            raise CheckpointError(f"malformed pickle: storage type {stype!r}")
        if isinstance(key, bytes):
            key = key.decode("ascii")
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise CheckpointError(f"malformed pickle: storage record {key!r}, {numel!r}")
        return self._storage_loader(stype, key, location, numel, view)

    # -- calls
    def _call(self, func, args, kwargs=None):
        if type(args) is not tuple:
            raise CheckpointError(f"malformed pickle: call arguments are a {type(args).__name__}, not a tuple")
        kwargs = kwargs or {}
        if not isinstance(kwargs, dict):
            raise CheckpointError("malformed pickle: keyword arguments are not a dict")
        if isinstance(func, StubGlobal):
            return StubObject(func.module, func.name, args, kwargs)
        if isinstance(func, _SafeFn):
            if func.qualname == "copyreg._reconstructor":
                if len(args) != 3:
                    raise CheckpointError("malformed copyreg._reconstructor call")
                cls, _base, state = args
                if isinstance(cls, StubGlobal):
                    return StubObject(cls.module, cls.name, (), {}, state)
                if cls in _TYPE_CTORS:
                    return _TYPE_CTORS[cls]()
                raise CheckpointError(f"unsupported copyreg._reconstructor of {cls!r}")
            if func.qualname == "copyreg.__newobj__":
                if not args:
                    raise CheckpointError("malformed copyreg.__newobj__ call")
                if isinstance(args[0], StubGlobal):
                    return self._call(args[0], args[1:])
                return self._newobj_builtin(args[0], args[1:])
            return func.fn(*args, **kwargs)
        if isinstance(func, type) and func in _TYPE_CTORS and not kwargs:
            return _TYPE_CTORS[func](*args)
        if isinstance(func, type) and func in _PLAIN_TYPES.values() and not kwargs and not args:
            return func()
        raise CheckpointError(f"malformed pickle: cannot call a {type(func).__name__} ({func!r})")

    def load_reduce(self):
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._call(cls, args) if isinstance(cls, StubGlobal) else self._newobj_builtin(cls, args))

    def load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        if isinstance(cls, StubGlobal):
            self.append(self._call(cls, args, kwargs))
        else:
            self.append(self._newobj_builtin(cls, args))

    @staticmethod
    def _newobj_builtin(cls, args):
        # cls.__new__(cls, *args): for our container types the arguments are ignored, like their __new__ does
        if isinstance(cls, type) and cls in _TYPE_CTORS:
            return _TYPE_CTORS[cls]() if cls not in (tuple, frozenset, complex, bytes, range, slice) \
                else _TYPE_CTORS[cls](*args)
        raise CheckpointError(f"malformed pickle: cannot create an object of {cls!r}")

    def _instantiate(self, klass, args):
        self.append(self._call(klass, tuple(args)))

    # -- mutations
    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, StubObject):
            inst.state = state
        elif isinstance(inst, _NpDtypeProxy):
            dt = _np_dtype_from(inst.args, state)
            self._replace_top(inst, dt if dt is not None else StubObject("numpy", "dtype", inst.args, None, state))
        elif isinstance(inst, _NpArrayProxy):
            arr = _np_array_from(inst.args, state)
            self._replace_top(inst, arr if arr is not None else StubObject("numpy", "ndarray", inst.args, None,
                                                                           state))
        elif isinstance(inst, OrderedDict) and (state is None or isinstance(state, dict)):
            for k, v in (state or {}).items():  # e.g. a state_dict's _metadata attribute
                if type(k) is not str:
                    raise CheckpointError("malformed pickle: non-string attribute name")
                inst.__dict__[sys.intern(k)] = v
        elif isinstance(inst, torch.Tensor):
            pass  # python attributes of tensors are not restored
        else:
            raise CheckpointError(f"malformed pickle: cannot set the state of a {type(inst).__name__}")

    def _replace_top(self, old, new):
        self.stack[-1] = new
        for k in reversed(self.memo):  # the proxy was memoised just before its BUILD
            if self.memo[k] is old:
                self.memo[k] = new
                break

    def load_append(self):
        value = self.stack.pop()
        self._extend(self.stack[-1], [value])

    def load_appends(self):
        items = self.pop_mark()
        self._extend(self.stack[-1], items)

    @staticmethod
    def _extend(target, items):
        if type(target) is list:
            target.extend(items)
        elif isinstance(target, StubObject):
            target.items.extend(items)
        else:
            raise CheckpointError(f"malformed pickle: cannot append to a {type(target).__name__}")

    def load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._setitems(self.stack[-1], [key, value])

    def load_setitems(self):
        items = self.pop_mark()
        self._setitems(self.stack[-1], items)

    @staticmethod
    def _setitems(target, items):
        if type(target) in (dict, OrderedDict):
            d = target
        elif isinstance(target, StubObject):
            d = target.dict_items
        else:
            raise CheckpointError(f"malformed pickle: cannot set items of a {type(target).__name__}")
        for i in range(0, len(items) - 1, 2):
            d[items[i]] = items[i + 1]

    def load_additems(self):
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise CheckpointError(f"malformed pickle: cannot add items to a {type(target).__name__}")
        target.update(items)

    def get_extension(self, code):
        raise CheckpointError("malformed pickle: extension codes (copyreg registry) are not supported")

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.ADDITEMS[0]] = load_additems


# ------------------------------------------------------------------------------------------------ file formats
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_INCOMPLETE = "the download is probably incomplete (or the file is damaged): download it again"


def _storage_from_bytes(data: bytes, dtype: torch.dtype, swap: bool) -> torch.UntypedStorage:
    if not data:
        return torch.UntypedStorage(0)
    st = torch.UntypedStorage.from_buffer(data, dtype=torch.uint8)
    if swap and _element_size(dtype) > 1:
        st.byteswap(dtype)
    return st


def _unpickle(data: bytes, loader, source: str):
    return RestrictedUnpickler(io.BytesIO(data), storage_loader=loader, source=source).load()


def _load_zip(zf: zipfile.ZipFile, source: str):
    names = zf.namelist()
    pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            raise CheckpointError(f"{source} is a TorchScript archive (torch.jit.save), not a torch.save checkpoint")
        raise CheckpointError(f"{source} is a zip file but not a torch.save checkpoint (no single <dir>/data.pkl)")
    root = pkls[0][: -len("data.pkl")]
    byteorder = "little"
    if root + "byteorder" in names:
        byteorder = zf.read(root + "byteorder").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise CheckpointError(f"{source}: unknown byte order {byteorder!r}")
    swap = byteorder != sys.byteorder
    cache: dict = {}

    def loader(stype, key, location, numel, view):
        dtype = stype.dtype
        if key not in cache:
            nbytes = numel * _element_size(dtype)
            name = f"{root}data/{key}"
            try:
                zinfo = zf.getinfo(name)
            except KeyError:
                raise CheckpointError(f"{source}: storage record {name} is missing; {_INCOMPLETE}") from None
            if zinfo.file_size != nbytes:  # checked before reading: sizes in the pickle cannot force big reads
                raise CheckpointError(f"{source}: storage {name} holds {zinfo.file_size} bytes, expected {nbytes}; "
                                      f"{_INCOMPLETE}")
            data = zf.read(zinfo)
            if len(data) != nbytes:
                raise CheckpointError(f"{source}: storage {name} holds {len(data)} bytes, expected {nbytes}; "
                                      f"{_INCOMPLETE}")
            cache[key] = _Storage(_storage_from_bytes(data, dtype, swap), dtype)
        return cache[key]

    return _unpickle(zf.read(pkls[0]), loader, source)


def _load_pickle_stream(f, source: str, size: int, allow_plain: bool = True):
    """Legacy torch.save stream (magic number, protocol, sys info, object, storage keys, raw storages) or, when
    ``allow_plain``, a plain pickle (persistent ids refused). ``size``: the stream's length (bounds allocations)."""
    first = RestrictedUnpickler(f, source=source).load()
    if first != _LEGACY_MAGIC:
        if not allow_plain:
            raise CheckpointError(f"{source}: not a torch checkpoint stream")
        return first
    proto = RestrictedUnpickler(f, source=source).load()
    if proto != 1001:
        raise CheckpointError(f"{source}: unsupported legacy torch format version {proto!r}")
    RestrictedUnpickler(f, source=source).load()  # sys info (storages are written little-endian regardless)
    storages: dict = {}
    views: dict = {}

    def loader(stype, key, location, numel, view):
        dtype = stype.dtype
        if key not in storages:
            nbytes = numel * _element_size(dtype)
            if nbytes > size:  # the data follows in the same stream: a larger claim is corrupt (or hostile)
                raise CheckpointError(f"{source}: storage {key} claims {nbytes} bytes, more than the whole file "
                                      f"({size} bytes); {_INCOMPLETE}")
            storages[key] = _Storage(torch.UntypedStorage(nbytes), dtype)
        root = storages[key]
        if view is None:
            return root
        vkey, off, vsize = view
        if vkey not in views:
            es = _element_size(dtype)
            views[vkey] = _Storage(root.untyped[off * es:(off + vsize) * es], dtype)
        return views[vkey]

    obj = RestrictedUnpickler(f, storage_loader=loader, source=source).load()
    keys = RestrictedUnpickler(f, source=source).load()
    if not isinstance(keys, list):
        raise CheckpointError(f"{source}: malformed legacy storage list")
    for key in keys:
        if key not in storages:
            raise CheckpointError(f"{source}: legacy storage {key!r} is not referenced")
        st = storages[key]
        es = _element_size(st.dtype)
        head = f.read(8)
        if len(head) != 8:
            raise EOFError("storage header cut short")
        (numel,) = struct.unpack("<q", head)
        nbytes = numel * es
        if nbytes != st.untyped.nbytes():
            raise CheckpointError(f"{source}: legacy storage {key} holds {nbytes} bytes, expected "
                                  f"{st.untyped.nbytes()}")
        data = f.read(nbytes)
        if len(data) != nbytes:
            raise EOFError("storage data cut short")
        if nbytes:
            src = _storage_from_bytes(data, st.dtype, swap=sys.byteorder != "little")  # always little-endian
            st.untyped.copy_(src)
    return obj


def _load_from_bytes(b):
    """torch.storage._load_from_bytes (storages pickled with plain pickle): a legacy torch.save blob, read safely."""
    if not isinstance(b, (bytes, bytearray)):
        raise CheckpointError("malformed torch.storage._load_from_bytes record")
    bio = io.BytesIO(bytes(b))
    if bytes(b[:4]) == b"PK\x03\x04":
        with zipfile.ZipFile(bio) as zf:
            obj = _load_zip(zf, "embedded storage")
    else:
        obj = _load_pickle_stream(bio, "embedded storage", len(b), allow_plain=False)
    if isinstance(obj, _Storage):
        return obj
    raise CheckpointError("malformed torch.storage._load_from_bytes record")


def load_checkpoint(path):
    """The whole object of a torch.save / Lightning checkpoint, read without executing anything.

    Tensors are real CPU tensors (views keep sharing storage as saved); objects of unknown classes are inert
    :class:`StubObject` records. Raises FileNotFoundError, :class:`UnsafeCheckpointError` (the pickle names code
    such as ``os.system``) or :class:`CheckpointError` (truncated, corrupt, not a checkpoint)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.is_dir():
        raise CheckpointError(f"{p} is a folder, not a checkpoint file")
    src = str(p)
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(8)
    except OSError as e:
        raise CheckpointError(f"cannot read {src}: {e}") from None
    if size == 0:
        raise CheckpointError(f"{src} is empty; {_INCOMPLETE}")
    try:
        if head[:2] == b"PK":
            try:
                zf = zipfile.ZipFile(p)
            except (zipfile.BadZipFile, EOFError, OSError) as e:
                raise CheckpointError(f"{src} ({size} bytes) is a truncated or corrupt zip checkpoint ({e}); "
                                      f"{_INCOMPLETE}") from None
            with zf:
                return _load_zip(zf, src)
        if head[:1] == b"\x80":
            with open(p, "rb") as fh:
                return _load_pickle_stream(fh, src, size)
    except (UnsafeCheckpointError, CheckpointError, MemoryError):
        raise
    except (EOFError, zipfile.BadZipFile, zlib.error, struct.error) as e:
        raise CheckpointError(f"{src} ({size} bytes) is truncated or corrupt ({type(e).__name__}: {e}); "
                              f"{_INCOMPLETE}") from None
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{src}: corrupt pickle data ({e}); {_INCOMPLETE}") from None
    except Exception as e:  # malformed pickles: stack/memo errors, bad arguments ...
        raise CheckpointError(f"{src}: malformed checkpoint ({type(e).__name__}: {e})") from None
    if tarfile.is_tarfile(p):
        raise CheckpointError(f"{src} is in the tar format of torch < 0.4, which cannot be read safely; re-save it "
                              f"with a recent torch first (only if you trust it)")
    raise CheckpointError(f"{src} is not a PyTorch checkpoint (neither a torch.save zip nor a pickle; first bytes "
                          f"{head!r})")


# ------------------------------------------------------------------------------------------------ state dicts
def _extract(obj, source: str):
    """(tensors, n_non_tensor_entries, info) of a loaded checkpoint object."""
    info = {}
    sd = None
    if isinstance(obj, dict):
        for k in ("global_step", "epoch"):
            if type(obj.get(k)) is int:
                info[k] = obj[k]
        if isinstance(obj.get("pytorch-lightning_version"), str):
            info["pytorch-lightning_version"] = obj["pytorch-lightning_version"]
        for k in ("state_dict", "model", "module"):
            if isinstance(obj.get(k), dict):
                sd = obj[k]
                info["container"] = k
                break
        if sd is None and any(isinstance(v, torch.Tensor) for v in obj.values()):
            sd, info["container"] = obj, "top level"
    if sd is None:
        top = (f"top-level keys: {', '.join(map(repr, list(obj)[:12]))}" if isinstance(obj, dict)
               else f"top-level object: {type(obj).__name__}")
        raise CheckpointError(f"no tensors found in {source} (no state_dict/model/module dict; {top})")
    tensors = {}
    dropped = 0
    for k, v in sd.items():
        if isinstance(k, str) and isinstance(v, torch.Tensor):
            tensors[k] = v.detach()
        else:
            dropped += 1
    if not tensors:
        raise CheckpointError(f"no tensors found in {source} ({info['container']} holds {len(sd)} entries, none a "
                              f"tensor)")
    return tensors, dropped, info


def _filter(tensors: dict, prefix, source: str) -> dict:
    if not prefix:
        return tensors
    kept = {k: v for k, v in tensors.items() if k.startswith(prefix)}
    if not kept:
        tops = sorted({k.split(".")[0] + "." for k in tensors})
        raise CheckpointError(f"no tensors with prefix {prefix!r} in {source} ({len(tensors)} tensors; their "
                              f"prefixes: {', '.join(tops[:12])}); use another prefix or all keys")
    return kept


def _read(path, prefix):
    p = Path(path)
    if p.suffix.lower() == ".safetensors":
        if not p.exists():
            raise FileNotFoundError(f"checkpoint not found: {p}")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(p))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{p}: unreadable safetensors file ({e}); {_INCOMPLETE}") from None
        if not tensors:
            raise CheckpointError(f"no tensors found in {p}")
        return _filter(tensors, prefix, str(p)), 0, {"container": "safetensors"}
    tensors, dropped, info = _extract(load_checkpoint(p), str(p))
    return _filter(tensors, prefix, str(p)), dropped, info


def read_state_dict(path, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` of a checkpoint: Lightning's ``state_dict``, else ``model``/``module``, else the top-level
    dict; ``.safetensors`` files through safetensors. Non-tensor entries are dropped; with ``prefix`` only keys
    starting with it are kept (full names). Raises FileNotFoundError / :class:`CheckpointError` /
    :class:`UnsafeCheckpointError` with a clear message."""
    return _read(path, prefix)[0]


def convert_to_safetensors(src, out, prefix: str | None = "encoder.", metadata: dict | None = None) -> dict:
    """Read ``src`` safely and write its (prefix-filtered) tensors to ``out`` (.safetensors), atomically.

    Tensors are made contiguous and storage sharing is broken (views are cloned), as safetensors requires. The
    file's metadata: source name, format "mvsplat", tensor count, prefix, Lightning global_step/epoch when present,
    plus ``metadata`` (values as strings). Nothing is written when reading fails; ``out`` may not be ``src``.
    Returns ``{"out", "n_tensors", "n_params", "dropped_non_tensor", "skipped_by_prefix", "bytes", ...}``."""
    from safetensors.torch import save_file

    from .atomic import atomic_write

    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve() or (out.exists() and src.exists() and out.samefile(src)):
        raise CheckpointError(f"refusing to overwrite the source checkpoint {src}; choose another --out")
    if out.is_dir():
        raise CheckpointError(f"output {out} is a folder; give a .safetensors file name")
    prefix = prefix or None
    tensors, dropped, info = _read(src, None)
    kept = _filter(tensors, prefix, str(src))
    seen: set = set()
    ready = {}
    for k, t in kept.items():
        t = t.detach().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        if t.numel():
            seen.add(ptr)
        ready[k] = t
    md = {"source": src.name, "format": "mvsplat", "n_tensors": str(len(ready)), "prefix": prefix or ""}
    for k in ("global_step", "epoch", "pytorch-lightning_version"):
        if k in info:
            md[k] = str(info[k])
    for k, v in (metadata or {}).items():
        md[str(k)] = str(v)
    atomic_write(out, lambda tmp: save_file(ready, tmp, metadata=md))
    return {"out": str(out), "n_tensors": len(ready), "n_params": int(sum(t.numel() for t in ready.values())),
            "dropped_non_tensor": dropped, "skipped_by_prefix": len(tensors) - len(kept), "prefix": prefix,
            "bytes": out.stat().st_size, "global_step": info.get("global_step"), "epoch": info.get("epoch")}


# ------------------------------------------------------------------------------------------------ CLI
def cmd_convert(args) -> int:
    out = args.out or str(Path(args.checkpoint).with_suffix(".safetensors"))
    prefix = None if args.all_keys else args.prefix
    rep = convert_to_safetensors(args.checkpoint, out, prefix=prefix)
    step = f", global step {rep['global_step']}" if rep.get("global_step") is not None else ""
    print(f"wrote {rep['out']}: {rep['n_tensors']} tensors, {rep['n_params']} parameters, {rep['bytes']} bytes"
          f"{step} (prefix {rep['prefix']!r}; skipped {rep['skipped_by_prefix']} tensors outside the prefix, "
          f"dropped {rep['dropped_non_tensor']} non-tensor entries)")
    return 0


def add_parser(sub) -> None:
    c = sub.add_parser("convert-mvsplat", help="MVSplat/Lightning .ckpt -> .safetensors, read without running any "
                                               "pickled code")
    c.add_argument("checkpoint", help="checkpoint to read (.ckpt/.pt/.pth/.bin, e.g. MVSplat's re10k.ckpt)")
    c.add_argument("--out", default=None, help="output .safetensors (default: next to the checkpoint)")
    c.add_argument("--prefix", default="encoder.", help="keep only keys starting with this (default 'encoder.'; "
                                                        "names are kept whole)")
    c.add_argument("--all-keys", action="store_true", help="keep every tensor (ignore --prefix)")
    c.set_defaults(func=cmd_convert)


def state_dict_mismatch(ref: dict, sd: dict) -> str | None:
    """What keeps ``sd`` from loading strictly into a module whose ``state_dict()`` is ``ref`` (shapes only, so
    ``ref`` may live on the meta device): a "; "-joined summary of missing, unexpected and wrong-shape keys with
    examples, or None when every key and shape matches."""
    missing = [k for k in ref if k not in sd]
    unexpected = [k for k in sd if k not in ref]
    bad = [f"{k} {tuple(sd[k].shape)} != {tuple(ref[k].shape)}" for k in ref
           if k in sd and tuple(sd[k].shape) != tuple(ref[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[:5]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:5]})")
    if bad:
        parts.append(f"{len(bad)} with the wrong shape (e.g. {bad[:3]})")
    return "; ".join(parts) or None
