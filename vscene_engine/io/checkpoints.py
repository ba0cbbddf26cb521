"""Safe reading of PyTorch / PyTorch Lightning checkpoints (``.ckpt``, ``.pt``, ``.pth``, ``.bin``) and their
conversion to ``.safetensors``: PyTorch's own weights-only unpickler, with an allow-list of our inert stand-ins.

Entry points
------------
:func:`load_checkpoint`         the whole checkpoint object (tensors real, other objects as inert :class:`StubObject`).
:func:`read_state_dict`         ``{name: tensor}`` of a checkpoint (Lightning ``state_dict``, ``model``/``module`` or a
                                plain state dict) or of a ``.safetensors`` file, optionally only keys with a prefix.
:func:`convert_to_safetensors`  checkpoint -> ``.safetensors`` (atomic write, metadata, a small report).
CLI                             ``python -m vscene_engine convert-mvsplat re10k.ckpt --out re10k.safetensors
                                [--prefix encoder.] [--all-keys]`` (:func:`add_parser`).

Formats: the zip format of ``torch.save``, its legacy stream (``_use_new_zipfile_serialization=False``) and plain
pickles (handed to ``torch.load`` inside a legacy envelope), all with pickle protocol 2, the only one torch's
weights-only unpickler reads (others are refused, naming the opcode). Tar (torch < 0.4) and TorchScript archives are
refused. Storages are materialised on the CPU. What cannot be done this way: DESIGN.md, "Reading checkpoints safely".

Safety model
------------
Objects are built only by ``torch.load(..., weights_only=True)``: PyTorch's weights-only unpickler, which refuses
every global that is neither on its own list (tensor rebuilders, storages, dtypes, ``OrderedDict``, ``set`` ...) nor
registered through ``torch.serialization.safe_globals``. Before it runs, the pickle's opcodes are listed (never
executed) and every global it names is sorted (:func:`_classify`):

1. torch's own weights-only globals: left to torch (non-dense tensor kinds are refused: only dense tensors);
2. **refused**, :class:`UnsafeCheckpointError` naming the global: modules that reach the OS, the interpreter or code
   (``os``, ``subprocess``, ``sys``, ``shutil``, ``socket``, ``importlib``, ``runpy``, ``pickle``, ``marshal``,
   ``codecs``, ``types``, ``ctypes``, ``functools``, ``operator``, ``builtins`` other than data types: ``eval``,
   ``exec``, ``getattr``, ``__import__``, ``open`` ...) and function-like names of torch/numpy (``torch.load``);
3. the **allow-list** :data:`ALLOWED`: builtin data types, ``collections.defaultdict``, the copyreg constructors,
   numpy scalars/arrays of plain numeric dtypes, ``torch.storage._load_from_bytes``, Lightning's ``AttributeDict``,
   each mapped to a function of ours that checks its arguments; and named inert stand-ins for the harmless classes a
   Lightning checkpoint names (omegaconf containers, pathlib paths, argparse/SimpleNamespace, Lightning callbacks);
4. any other name (a dataclass config or enum of the training code, an lr-scheduler class ...): a fresh inert
   stand-in class for this load only.

A stand-in is a class of ours (metaclass :class:`StubGlobal`, base :class:`StubObject`), never the named one: calling
it, ``__new__`` and ``__setstate__`` only record their arguments. The refusal in step 2 covers names the file merely
mentions. What the listing cannot resolve is not registered, so torch refuses it: the listing can only fail closed.
"""
from __future__ import annotations

import _compat_pickle
import functools
import io
import pickle
import pickletools
import re
import tarfile
import threading
import warnings
import zipfile
from pathlib import Path

import torch

__all__ = [
    "UnsafeCheckpointError", "CheckpointError", "StubGlobal", "StubObject", "ALLOWED",
    "load_checkpoint", "read_state_dict", "convert_to_safetensors", "add_parser", "state_dict_mismatch"]

CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_INCOMPLETE = "the download is probably incomplete (or the file is damaged): download it again"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class UnsafeCheckpointError(ValueError):
    """The checkpoint's pickle references a global that can run code: the file is refused, nothing was executed."""


class CheckpointError(ValueError):
    """The file is not a readable checkpoint (missing, truncated, corrupt, unsupported format, no tensors)."""


# ------------------------------------------------------------------------------------------------ inert stand-ins
class StubGlobal(type):
    """Metaclass of the stand-in classes: a stand-in *is* the record of the global ``module.name`` it replaces."""

    @property
    def module(cls) -> str:
        return cls._stub_module

    @property
    def name(cls) -> str:
        return cls._stub_name

    @property
    def qualname(cls) -> str:
        return f"{cls._stub_module}.{cls._stub_name}"

    def __repr__(cls) -> str:
        return f"<stub global {cls.qualname}>"


class StubObject:
    """Inert record of an object of a class that was not loaded: how the pickle built it, as plain data.

    ``args``/``kwargs``: constructor arguments (REDUCE, NEWOBJ); ``state``: the BUILD state (usually the instance
    ``__dict__``). Nothing of the original class is imported or run."""

    _stub_module, _stub_name = "?", "?"

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self.args, self.kwargs, self.state = args, kwargs, None
        return self

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state

    @property
    def module(self) -> str:
        return type(self)._stub_module

    @property
    def name(self) -> str:
        return type(self)._stub_name

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:  # shallow: records may be large or cyclic (omegaconf nodes point to their parent)
        parts = [f"args={self.args!r}"[:120] if _plain(self.args) else f"{len(self.args)} args"] if self.args else []
        if self.kwargs:
            parts.append(f"kwargs {sorted(self.kwargs)}")
        if self.state is not None:
            parts.append(f"state keys {list(self.state)[:8]}" if isinstance(self.state, dict)
                         else f"state {type(self.state).__name__}")
        return f"<stub {self.qualname}{' ' + ', '.join(parts) if parts else ''}>"


def _stand_in(qualname: str) -> StubGlobal:
    module, _, name = qualname.rpartition(".")
    return StubGlobal(name, (StubObject,), {"_stub_module": module, "_stub_name": name,
                                            "__module__": __name__ + ".stand_ins"})


# ------------------------------------------------------------------------------------------------ checked constructors
def _plain(v) -> bool:
    if v is None or type(v) in (bool, int, float, complex, str, bytes, bytearray):
        return True
    if type(v) in (tuple, list, set, frozenset):
        return all(_plain(x) for x in v)
    if type(v) is dict:
        return all(_plain(k) and _plain(x) for k, x in v.items())
    return False


def _data_type(t):
    """``builtins.<t>``: called only with plain data (no argument is ever iterated or converted through a hook)."""
    def make(*args):  # (bytes(n) of an int would allocate n zero bytes: refused)
        if not all(_plain(a) for a in args) or len(args) > 3 or (t is bytes and any(type(a) is int for a in args)):
            raise CheckpointError(f"malformed pickle: {t.__name__} of {[type(a).__name__ for a in args]}")
        return t(*args)
    make.__name__ = make.__qualname__ = f"builtins_{t.__name__}"
    return make


class _PlainDict:
    """``collections.defaultdict(factory)`` / Lightning's ``AttributeDict``: called or built (REDUCE, NEWOBJ), a plain
    dict, which SETITEMS then fills (the factory is dropped)."""

    def __new__(cls, *args, **kwargs):
        return {}


def _copyreg_reconstructor(cls, base, state):
    if isinstance(cls, StubGlobal):
        return cls.__new__(cls)
    raise CheckpointError(f"malformed pickle: copyreg._reconstructor of {cls!r}")


def _copyreg_newobj(cls, *args):
    if isinstance(cls, StubGlobal):
        return cls.__new__(cls, *args)
    raise CheckpointError(f"malformed pickle: copyreg.__newobj__ of {cls!r}")


_NP_SAFE_DTYPE = re.compile(r"^[<>=|]?(b1|[iu][1248]|f[248]|f16|c8|c16|c32|U\d{1,6}|S\d{1,6})$")


def _np_dtype(name=None, align=False, copy=True):
    """``numpy.dtype(name, ...)``: a real numpy dtype for plain numeric/string dtypes, else an inert record."""
    import numpy as np
    if isinstance(name, str) and _NP_SAFE_DTYPE.match(name) and type(align) is bool and type(copy) is bool:
        return np.dtype(name)
    return _stand_in("numpy.dtype")(name, align, copy)


def _np_scalar(dtype, data=None):
    import numpy as np
    if isinstance(dtype, np.dtype) and dtype.kind in "biufcUS" and type(data) is bytes and len(data) == dtype.itemsize:
        return np.frombuffer(data, dtype=dtype)[0]
    return _stand_in("numpy.scalar")(dtype, data)


def _np_reconstruct(subtype, shape, dtype):
    """``numpy ... _reconstruct(ndarray, (0,), b'b')``: an empty ndarray that numpy's own BUILD then fills."""
    import numpy as np
    if subtype is not ALLOWED["numpy.ndarray"] or shape != (0,):
        raise CheckpointError(f"unsupported numpy array record ({subtype!r}, {shape!r})")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _load_from_bytes(b):
    """``torch.storage._load_from_bytes`` (tensors pickled by plain pickle): the embedded torch.save blob, read by
    the same rules (the real function would call ``torch.load(weights_only=False)``)."""
    if type(b) is not bytes:
        raise CheckpointError("malformed torch.storage._load_from_bytes record")
    obj = _load(io.BytesIO(b), "embedded storage", len(b))
    if not isinstance(obj, torch.storage.TypedStorage):
        raise CheckpointError("malformed torch.storage._load_from_bytes record: not a storage")
    return obj


# ------------------------------------------------------------------------------------------------ the allow-list
_OMEGACONF = ("omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig", "omegaconf.base.ContainerMetadata",
              "omegaconf.base.Metadata", "omegaconf.nodes.AnyNode", "omegaconf.nodes.StringNode",
              "omegaconf.nodes.IntegerNode", "omegaconf.nodes.FloatNode", "omegaconf.nodes.BooleanNode",
              "omegaconf.nodes.EnumNode", "omegaconf.nodes.PathNode", "omegaconf.nodes.BytesNode", "typing.Any")
_PATHS = tuple(f"pathlib.{n}" for n in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath",
                                        "PureWindowsPath"))
_CALLBACKS = tuple(f"{m}.callbacks.{sub}.{n}" for m in ("pytorch_lightning", "lightning.pytorch")
                   for sub, n in (("model_checkpoint", "ModelCheckpoint"), ("early_stopping", "EarlyStopping"),
                                  ("lr_monitor", "LearningRateMonitor")))
_NAMESPACES = ("argparse.Namespace", "types.SimpleNamespace")
_ATTRIBUTE_DICTS = ("pytorch_lightning.utilities.parsing.AttributeDict",
                    "lightning_fabric.utilities.data.AttributeDict", "lightning.fabric.utilities.data.AttributeDict")


def _build_allowed() -> dict:
    a: dict = {f"builtins.{t.__name__}": _data_type(t)
               for t in (dict, list, tuple, frozenset, int, float, str, bool, bytes, slice, range)}
    a["collections.defaultdict"] = _PlainDict
    a.update({n: _PlainDict for n in _ATTRIBUTE_DICTS})
    a["copyreg._reconstructor"] = _copyreg_reconstructor
    a["copyreg.__newobj__"] = _copyreg_newobj
    a["torch.storage._load_from_bytes"] = _load_from_bytes
    a["numpy.dtype"] = _np_dtype
    a["builtins.object"] = _stand_in("builtins.object")  # only the base-class argument of copyreg._reconstructor
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        a[f"{mod}.scalar"] = _np_scalar
        a[f"{mod}._reconstruct"] = _np_reconstruct
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):  # protocol-5 arrays: recorded, never rebuilt
        a[f"{mod}._frombuffer"] = _stand_in(f"{mod}._frombuffer")
    for n in ("numpy.ndarray",) + _OMEGACONF + _PATHS + _CALLBACKS + _NAMESPACES:
        a[n] = _stand_in(n)
    return a


ALLOWED: dict = _build_allowed()  # "module.Name" -> our stand-in (function, checked constructor or inert class)


def _build_only() -> list:
    """numpy's ndarray and plain dtype classes, registered for every load only so that numpy's own BUILD may fill an
    array made by :func:`_np_reconstruct` or set the byte order of a dtype made by :func:`_np_dtype` (torch's BUILD
    requires the instance's type to be registered). Their names hold a newline, which no GLOBAL opcode can name: a
    file never gets the real classes themselves."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return []
    types = [np.ndarray] + [type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"]
    return [(t, f"numpy.{t.__name__}\n(BUILD only, never a GLOBAL)") for t in types]


_BUILD_ONLY = _build_only()

_DENY_MODULES = frozenset("""
os posix nt posixpath ntpath genericpath subprocess _posixsubprocess shutil sys io _io importlib runpy pickle _pickle
pickletools codecs _codecs socket _socket ssl webbrowser functools _functools operator _operator ctypes _ctypes
marshal types code codeop inspect threading _thread multiprocessing concurrent signal _signal pty tty tempfile glob
asyncio http urllib ftplib smtplib telnetlib poplib imaplib xmlrpc pdb bdb timeit trace cProfile profile gc weakref
_weakref select selectors mmap resource fcntl pwd grp zipimport pkgutil site sysconfig distutils setuptools pip
platform getpass builtins __builtin__ copyreg copy_reg dill cloudpickle joblib shelve dbm sqlite3 zipfile tarfile
lzma bz2 gzip zlib logging atexit faulthandler readline rlcompleter ensurepip venv
""".split())
_NON_DENSE = frozenset(f"torch._utils.{n}" for n in (
    "_rebuild_sparse_tensor", "_rebuild_qtensor", "_rebuild_nested_tensor", "_rebuild_wrapper_subclass",
    "_rebuild_meta_tensor_no_storage", "_rebuild_device_tensor_from_numpy"))


@functools.lru_cache(maxsize=1)
def _torch_allowed() -> frozenset:
    from torch import _weights_only_unpickler as wo  # read only: the names torch accepts without safe_globals
    return frozenset(wo._get_allowed_globals())


def _unsafe(qualname: str, source: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"refusing to load {source}: its pickle references {qualname}, which can run code or reach the "
        f"system, so this is not a plain checkpoint. Do not load it from untrusted sources; if you trust it, convert "
        f"it with the official code instead (torch.load in the model's own repository). Nothing was executed.")


def _classify(qualname: str, source: str):
    """None (torch's own), a stand-in from :data:`ALLOWED`, a fresh inert stand-in, or raise (refused)."""
    if qualname in _NON_DENSE:
        raise CheckpointError(f"{source}: unsupported tensor kind ({qualname}); only dense tensors can be read safely")
    if qualname in _torch_allowed():
        return None
    if qualname in ALLOWED:
        return ALLOWED[qualname]
    module, _, name = qualname.rpartition(".")
    top = module.split(".")[0]
    if top in _DENY_MODULES or module in _DENY_MODULES:
        raise _unsafe(qualname, source)
    if top in ("torch", "numpy", "safetensors") and not name.lstrip("_")[:1].isupper():
        raise _unsafe(qualname, source)  # function-like names of these libraries (torch.load, numpy.load ...)
    return _stand_in(qualname)


# ------------------------------------------------------------------------------------------------ listing globals
_PUSHES_STR = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}


def _map_name(module: str, name: str) -> str:
    if (module, name) in _compat_pickle.NAME_MAPPING:  # python 2 names, mapped as torch's unpickler does
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def _scan(f) -> tuple[list, int, list]:
    """Globals named by the next pickle in ``f`` (read up to its STOP, nothing built), its protocol and its top-level
    constant values. STACK_GLOBAL names are followed through the string pushes and the memo; an unresolvable one is
    reported as "?" (and never registered)."""
    found, proto, top, memo = [], 0, [], {}
    for op, arg, _pos in pickletools.genops(f):
        n = op.name
        if n in ("GLOBAL", "INST"):
            module, _, name = arg.partition(" ")
            found.append(_map_name(module, name))
        elif n == "STACK_GLOBAL":
            found.append(_map_name(*top[-2:]) if len(top) >= 2 and all(isinstance(x, str) for x in top[-2:])
                         else "?")
        elif n == "PROTO":
            proto = arg
        if n in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
            memo[len(memo) if n == "MEMOIZE" else arg] = top[-1] if top else None
        elif n in ("GET", "BINGET", "LONG_BINGET"):
            top.append(memo.get(arg))
        elif n in _PUSHES_STR or n in ("LONG1", "BININT", "BININT1", "BININT2"):
            top.append(arg)
        elif n not in ("FRAME", "PROTO", "STOP"):
            top.append(None)
        del top[:-8]
    return found, proto, top


def _list_globals(f, size: int, source: str) -> tuple[list, int, str]:
    """(globals, protocol, kind) of a pickle stream: a legacy torch.save stream (its five pickles) or one plain
    pickle; ``f`` is left at the start."""
    start = f.tell()
    try:
        names, proto, vals = _scan(f)
        kind = "plain"
        if vals == [_LEGACY_MAGIC]:
            kind = "legacy"
            for _ in range(4):  # protocol version, sys info, the object, the storage keys
                more, p, _v = _scan(f)
                names += more
                proto = max(proto, p)
    except ValueError as e:  # pickletools: truncated stream, unknown opcode
        raise CheckpointError(f"{source} ({size} bytes) is truncated or corrupt ({e}); {_INCOMPLETE}") from None
    f.seek(start)
    return names, proto, kind


def _zip_pickle(path_or_bytes, source: str) -> bytes:
    try:
        with zipfile.ZipFile(path_or_bytes) as zf:
            names = zf.namelist()
            if len(set(names)) != len(names):  # python's zipfile and torch's reader could pick different copies
                raise CheckpointError(f"{source}: a zip file with duplicate entries is not a torch.save checkpoint")
            pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkls) != 1:
                if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
                    raise CheckpointError(f"{source} is a TorchScript archive (torch.jit.save), not a torch.save "
                                          f"checkpoint")
                raise CheckpointError(f"{source} is a zip file but not a torch.save checkpoint (no single "
                                      f"<dir>/data.pkl)")
            for info in zf.infolist():  # torch's zip reader does not check CRCs: a damaged record would load
                if info.CRC == 0 and info.file_size:  # torch.save without CRCs (save.compute_crc32=False)
                    continue
                with zf.open(info) as r:
                    while r.read(1 << 24):
                        pass
            return zf.read(pkls[0])
    except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as e:
        raise CheckpointError(f"{source} is a truncated or corrupt zip checkpoint ({e}); {_INCOMPLETE}") from None


# ------------------------------------------------------------------------------------------------ loading
_LOCK = threading.RLock()  # torch's safe_globals registry is process-wide
_ACTIVE = threading.local()


def _wo_message(e: Exception) -> str:
    """The reason in torch's weights-only error, without its generic advice (which suggests weights_only=False)."""
    m = re.search(r"WeightsUnpickler error: *(\S.*)", str(e))
    if m:
        return m.group(1).strip()
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith(("Weights only load failed", "Check the documentation",
                                                     "Please file an issue"))]
    return (keep or lines or [type(e).__name__])[0]


def _load(f, source: str, size: int):
    """Classify every global ``f`` names, then ``torch.load(weights_only=True)`` with the stand-ins registered."""
    head = f.read(4)
    f.seek(0)
    if head[:2] == b"PK":
        pkl = _zip_pickle(f, source)
        f.seek(0)
        names, proto, kind = _list_globals(io.BytesIO(pkl), size, source)
        kind = "zip"
    else:
        names, proto, kind = _list_globals(f, size, source)
    safe = {}
    for q in dict.fromkeys(names):
        if q == "?":
            raise CheckpointError(f"{source}: a global built at load time (STACK_GLOBAL) cannot be checked; "
                                  f"refused")
        s = _classify(q, source)
        if s is not None:
            safe[q] = s
    if kind == "plain":  # not a torch.save stream: wrap it in the legacy envelope so that torch.load reads it
        env = [pickle.dumps(_LEGACY_MAGIC, 2), pickle.dumps(1001, 2), pickle.dumps({"protocol_version": 1001}, 2)]
        f = io.BytesIO(b"".join(env) + f.read() + pickle.dumps([], 2))
    with _LOCK:
        nested = getattr(_ACTIVE, "on", False)
        if nested and any(q not in ALLOWED for q in safe):
            raise CheckpointError(f"{source}: an embedded storage names {sorted(safe)}")
        pairs = [] if nested else [(s, q) for q, s in safe.items()] + _BUILD_ONLY
        _ACTIVE.on = True
        try:
            with torch.serialization.safe_globals(pairs), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            msg = _wo_message(e)
            m = re.match(r"Unsupported operand (\d+)", msg)
            if m:
                op = pickletools.code2op.get(chr(int(m.group(1))))
                raise CheckpointError(
                    f"{source}: written with pickle protocol {proto or '0/1'}, whose opcode "
                    f"{op.name if op else m.group(1)} PyTorch's weights-only unpickler does not read; only "
                    f"protocol 2 (what torch.save and Lightning write) is supported") from None
            raise CheckpointError(f"{source}: malformed checkpoint ({msg})") from None
        finally:
            _ACTIVE.on = nested


def load_checkpoint(path):
    """The whole object of a torch.save / Lightning checkpoint, read by PyTorch's weights-only unpickler.

    Tensors are real CPU tensors (views keep sharing storage as saved); objects of other classes are inert
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
    if head[:2] != b"PK" and head[:1] != b"\x80":
        if tarfile.is_tarfile(p):
            raise CheckpointError(f"{src} is in the tar format of torch < 0.4, which cannot be read safely; re-save "
                                  f"it with a recent torch first (only if you trust it)")
        try:  # a protocol 0/1 pickle names its globals too: refuse a hostile one by name
            with open(p, "rb") as fh:
                _list_globals(fh, size, src)
        except CheckpointError:
            raise CheckpointError(f"{src} is not a PyTorch checkpoint (neither a torch.save zip nor a pickle; first "
                                  f"bytes {head!r})") from None
    try:
        with open(p, "rb") as fh:
            return _load(fh, src, size)
    except (UnsafeCheckpointError, CheckpointError):
        raise
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{src} ({size} bytes) is truncated or corrupt ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); {_INCOMPLETE}") from None
    except Exception as e:  # malformed pickles: stack/memo errors, bad arguments, MemoryError ...
        raise CheckpointError(f"{src}: malformed checkpoint ({type(e).__name__}: {e})") from None


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

    from ..core.atomic import atomic_write

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
