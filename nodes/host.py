"""Host adapter: the ONLY module of the pack that talks to ComfyUI.

Every ``comfy*`` / ``folder_paths`` / ``comfy_api`` import of the pack lives here, guarded, so that the node
classes also run (in CI, in plain scripts) when ComfyUI is absent. ``HOST_AVAILABLE`` says which branch is
active. Set the environment variable ``VSCENE_NO_HOST=1`` before the first import to force the fallback
branch even where ComfyUI is importable.

Public API (shapes in the docstrings):

* progress(total, desc, preview_every) -> Progress: the engine's progress protocol (vscene_engine.core.runtime) on
  ComfyUI's ProgressBar + interrupt flag; update(done, total, *, stage, loss, preview) / check_interrupt / close
* interrupt_checks() -> a protocol object that only checks for Cancel (no bar)
* check_interrupt(), Interrupted, _interrupt_flag (threading.Event, for tests)
* torch_device(), offload_device(), intermediate_device(), preferred_dtype(device, model_params=None),
  soft_empty_cache()
* ManagedModule(module, load_device=None, offload_device=None): load_to_gpu(extra_memory=0), offload()
* ManagedPlacer(modules, mode, extra_memory): a vscene_engine Placer over ManagedModules (default/offload/sequential)
* register_model_folder(name, subdir, extensions, kind="files"), model_dirs(name), list_models(name),
  model_path(name, filename); folders "videoscene", "CogVideo" (diffusers folders), "mvsplat", "noposplat" are
  registered at import time
* safetensors_header(path), weights_kind(path) ("ddpnet" / "prompt_embeds" / "transformer" / "unreadable" / "other",
  from the header only, cached by mtime), list_weights(name, kinds): what each weights dropdown offers
* install_example_inputs(input_dir=None): the example photos of the two-photo templates copied into ComfyUI's input
  folder when no file of that name exists there (run once at import in the host; never overwrites, never raises)
* output_dir(), output_path(subfolder, filename_prefix, ext), output_ui_entry(path), atomic_path(path),
  atomic_write_bytes(path, data)
* scene_to_splat(scene_or_list), splat_to_scenes(splat), SPLAT_CLASS, LocalSPLAT
* frames_to_video(frames, fps), LocalVideo
* CFGGuider (core's GUIDER base, or a stand-in with its interface) and the sampling helpers a guider uses:
  prepare_sampling, cleanup_models, convert_cond, process_conds, calc_cond_batch, cfg_function (nodes/guider.py)

Note for pack code: inside ComfyUI the pack is imported as a package (custom_nodes/<name>/__init__.py), and
ComfyUI itself owns the top-level module name ``nodes``. Import this module relatively (``from .host import
...`` / ``from ..nodes import host``), never as ``import nodes.host``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import uuid
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Sequence

import torch

try:  # the pack's __init__.py registers the engine under its top-level name (see _gaussian_scene_cls)
    from vscene_engine.core import runtime
except ImportError:  # pragma: no cover - pack imported as a package without that registration
    from ..vscene_engine.core import runtime

log = logging.getLogger("videoscene.host")

# ------------------------------------------------------------------------------------------- host imports
_mm = None          # comfy.model_management
_cutils = None      # comfy.utils
_fp = None          # folder_paths
_ModelPatcher = None
_api_InputImpl = None
_api_Types = None
_cli_args = None
_cs = None          # comfy.samplers
_sh = None          # comfy.sampler_helpers

if os.environ.get("VSCENE_NO_HOST", "").strip() not in ("", "0"):
    log.debug("VSCENE_NO_HOST set: using the standalone fallbacks")
else:
    try:  # the core: all three or nothing
        import comfy.model_management as _mm_mod
        import comfy.utils as _cutils_mod
        import folder_paths as _fp_mod

        _mm, _cutils, _fp = _mm_mod, _cutils_mod, _fp_mod
    except Exception as e:  # ImportError, or a half-broken install
        log.debug("ComfyUI core not importable (%s): standalone fallbacks", e)
    if _mm is not None:
        try:
            from comfy.model_patcher import ModelPatcher as _ModelPatcher
        except Exception as e:
            log.debug("comfy.model_patcher unavailable: %s", e)
        try:
            from comfy.cli_args import args as _cli_args
        except Exception:
            _cli_args = None
        try:
            from comfy_api.latest import InputImpl as _api_InputImpl, Types as _api_Types
        except Exception as e:
            log.debug("comfy_api.latest unavailable: %s", e)
        try:  # both or neither
            import comfy.sampler_helpers as _sh_mod
            import comfy.samplers as _cs_mod

            _sh, _cs = _sh_mod, _cs_mod
        except Exception as e:
            log.debug("comfy.samplers unavailable: %s", e)

HOST_AVAILABLE: bool = _mm is not None
"""True when running inside (or with) ComfyUI: comfy.model_management, comfy.utils and folder_paths imported."""


# ================================================================================================ progress
def _preview_to_pil(preview):
    """IMAGE-like tensor -> RGB ``PIL.Image``.

    ``preview``: float [H, W, C] (or [1, H, W, C], or [C, H, W] with C in {1, 3, 4}) in 0..1; alpha dropped,
    grey expanded to RGB. A ``PIL.Image`` is passed through.
    """
    from PIL import Image

    if isinstance(preview, Image.Image):
        return preview.convert("RGB")
    t = torch.as_tensor(preview).detach()
    if t.dim() == 4:
        t = t[0]
    if t.dim() == 2:
        t = t[:, :, None]
    if t.dim() != 3:
        raise ValueError(f"preview must be [H,W,3] (or [1,H,W,3]), got shape {tuple(t.shape)}")
    if t.shape[-1] not in (1, 3, 4) and t.shape[0] in (1, 3, 4):
        t = t.permute(1, 2, 0)
    if t.shape[-1] == 1:
        t = t.expand(-1, -1, 3)
    t = t[..., :3]
    if t.is_floating_point():
        t = (t.float().clamp(0, 1) * 255.0).round()
    arr = t.to(torch.uint8).cpu().contiguous().numpy()
    return Image.fromarray(arr, "RGB")


def _preview_max_size() -> int | None:
    return getattr(_cli_args, "preview_size", 512) if _cli_args is not None else 512


class Progress(runtime.Progress):
    """The host's implementation of the engine's progress protocol (:class:`vscene_engine.core.runtime.Progress`).

    ``update(done, total, *, stage=None, loss=None, preview=None)`` drives the node's ``comfy.utils.ProgressBar``
    (``total`` may change between stages: the bar follows the current stage); a preview (IMAGE-like [H, W, 3]
    float 0..1) is sent as ``("JPEG", PIL.Image, preview_size)`` exactly like the samplers' latent previews, on
    every ``preview_every``-th update of a stage and on its last one. ``check_interrupt()`` is the module's
    :func:`check_interrupt` (ComfyUI's Cancel). ComfyUI's progress hook itself checks for interrupts, so ``update``
    may raise the host's interrupt exception too. Always (when tqdm is importable) also a console tqdm bar.
    Usable as a context manager.

    Attributes: ``n`` (current count), ``total``, ``stage``, ``loss`` (last loss or None), ``last_preview`` (the
    last preview sent, or None), ``previews`` (number of previews sent).
    """

    def __init__(self, total: int = 0, desc: str = "", preview_every: int = 1):
        self.total = max(int(total), 0)
        self.desc = desc
        self.preview_every = max(1, int(preview_every))
        self.n = 0
        self.stage = None
        self.loss = None
        self.last_preview = None
        self.previews = 0
        self._closed = False
        self._bar = None
        if HOST_AVAILABLE:
            try:
                self._bar = _cutils.ProgressBar(self.total)
            except Exception as e:  # pragma: no cover - defensive
                log.debug("ProgressBar unavailable: %s", e)
        self._tqdm = None
        try:
            from tqdm.auto import tqdm

            self._tqdm = tqdm(total=self.total, desc=desc or None, leave=False, dynamic_ncols=True)
        except Exception:
            self._tqdm = None

    def update(self, done: int, total: int, *, stage: str | None = None, loss: float | None = None,
               preview=None) -> None:
        """``done`` of ``total`` units of ``stage`` (clamped to 0..total); see the class docstring."""
        total = max(int(total), 0)
        done = min(max(int(done), 0), total) if total else max(int(done), 0)
        if preview is not None and not (done % self.preview_every == 0 or done >= total):
            preview = None
        new_stage = stage != self.stage or total != self.total
        self.stage, self.loss = stage, loss
        if self._tqdm is not None:
            if new_stage:
                self._tqdm.set_description(": ".join(x for x in (self.desc, stage) if x) or None, refresh=False)
                self._tqdm.reset(total=total)
                self._tqdm.update(done)
            elif done != self.n:
                self._tqdm.update(done - self.n)
            if loss is not None:
                self._tqdm.set_postfix(loss=f"{float(loss):.5g}", refresh=False)
        self.n, self.total = done, total
        if preview is not None:
            self.last_preview = preview
            self.previews += 1
        if self._bar is not None:
            tup = None
            if preview is not None:
                try:
                    tup = ("JPEG", _preview_to_pil(preview), _preview_max_size())
                except Exception as e:
                    log.debug("could not convert preview: %s", e)
            self._bar.update_absolute(done, total, tup)

    def check_interrupt(self) -> None:
        check_interrupt()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._tqdm is not None:
            self._tqdm.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int = 0, desc: str = "", preview_every: int = 1) -> Progress:
    """A host progress reporter, starting at 0 of ``total`` (see :class:`Progress`); pass it to engine functions."""
    return Progress(total, desc, preview_every)


class _InterruptChecks(runtime.Progress):
    """Interrupt checks only (no bar): for work inside another bar, e.g. the 3D-aware hook inside a sampler."""

    def check_interrupt(self) -> None:
        check_interrupt()


def interrupt_checks() -> runtime.Progress:
    """A progress object that shows nothing and raises :data:`Interrupted` on Cancel (see :func:`check_interrupt`)."""
    return _InterruptChecks()


# =============================================================================================== interrupt
Interrupted = _mm.InterruptProcessingException if HOST_AVAILABLE else runtime.Interrupted
"""The interrupt exception class: ComfyUI's ``InterruptProcessingException`` in the host, else the engine's
:class:`vscene_engine.core.runtime.Interrupted`. Catch it as ``host.Interrupted`` (both derive from BaseException)."""

_interrupt_flag = threading.Event()
"""Test hook: when set, the next :func:`check_interrupt` clears it and raises :data:`Interrupted`."""


def check_interrupt() -> None:
    """Raise :data:`Interrupted` if the user pressed Cancel (host) or ``_interrupt_flag`` is set.

    Like ComfyUI, the request is consumed by raising (the flag is cleared). Cheap: call it in loops.
    """
    if _interrupt_flag.is_set():
        _interrupt_flag.clear()
        raise Interrupted("interrupted (videoscene _interrupt_flag)")
    if HOST_AVAILABLE:
        _mm.throw_exception_if_processing_interrupted()


# ================================================================================================= devices
def _fallback_device() -> torch.device:
    env = os.environ.get("VSCENE_DEVICE", "").strip()
    if env:
        return torch.device(env)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def torch_device() -> torch.device:
    """Compute device (host: ``get_torch_device()``; fallback: $VSCENE_DEVICE, else cuda, mps, cpu)."""
    return _mm.get_torch_device() if HOST_AVAILABLE else _fallback_device()


def offload_device() -> torch.device:
    """Where idle model weights live (host: ``unet_offload_device()``, cpu unless --highvram; fallback cpu)."""
    return _mm.unet_offload_device() if HOST_AVAILABLE else torch.device("cpu")


def intermediate_device() -> torch.device:
    """Where node outputs (IMAGE, MASK, SPLAT...) are placed (host: ``intermediate_device()``; fallback cpu)."""
    return _mm.intermediate_device() if HOST_AVAILABLE else torch.device("cpu")


def preferred_dtype(device=None, model_params: int | None = None,
                    supported: Sequence[torch.dtype] = (torch.bfloat16, torch.float16, torch.float32)) -> torch.dtype:
    """Weight/compute dtype for a model of ``model_params`` parameters on ``device`` (default torch_device()).

    Host: ``comfy.model_management.unet_dtype`` (honours --fp32-unet/--bf16-unet/... and GPU capabilities).
    Fallback: cuda -> bf16 if supported else fp16; mps -> fp16; cpu -> fp32; restricted to ``supported``.
    """
    device = torch.device(device) if device is not None else torch_device()
    supported = list(supported)
    if HOST_AVAILABLE:
        try:
            return _mm.unet_dtype(device=device, model_params=int(model_params or 0), supported_dtypes=supported)
        except Exception as e:  # pragma: no cover - defensive
            log.debug("unet_dtype failed (%s); using fallback rule", e)
    if device.type == "cuda":
        cands = [torch.bfloat16] if torch.cuda.is_bf16_supported() else []
        cands += [torch.float16, torch.float32]
    elif device.type == "mps":
        cands = [torch.float16, torch.float32]
    else:
        cands = [torch.float32]
    for dt in cands:
        if dt in supported:
            return dt
    return supported[-1] if supported else torch.float32


def soft_empty_cache(force: bool = False) -> None:
    """Release cached accelerator memory (host: ``soft_empty_cache``; fallback: ``torch.cuda.empty_cache``)."""
    if HOST_AVAILABLE:
        _mm.soft_empty_cache(force)
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


# =========================================================================================== model manager
class _Holder(torch.nn.Module):
    """Plain container given to ModelPatcher. ModelPatcher assigns ``model.device`` (and a few bookkeeping
    attributes) which fails on modules with a read-only ``device`` property (e.g. diffusers ModelMixin)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *a, **k):  # pragma: no cover - not used
        return self.inner(*a, **k)


def _holder_for(module: torch.nn.Module) -> _Holder:
    """A _Holder subclass named after the wrapped module, so ComfyUI's log says e.g. "Requested to load
    VideoScene_CogVideoXTransformer3DModel" instead of "_Holder"."""
    cls = type(f"VideoScene_{type(module).__name__}", (_Holder,), {})
    return cls(module)


class ManagedModule:
    """An arbitrary ``torch.nn.Module`` under the host's memory manager.

    Host: wrapped in ``comfy.model_patcher.ModelPatcher(load_device, offload_device)``; :meth:`load_to_gpu`
    calls ``comfy.model_management.load_models_gpu([patcher], memory_required=extra_memory,
    force_full_load=True)`` (full load: plain modules cannot be split like comfy.ops layers), which may evict
    other models; ComfyUI may later evict this one when something else needs memory (call load_to_gpu
    before every use). :meth:`offload` unloads it from ComfyUI's list and moves it to the offload device.
    Fallback: ``module.to(device)``.
    """

    def __init__(self, module: torch.nn.Module, load_device=None, offload_device=None, size: int = 0):
        self.module = module
        self.load_device = torch.device(load_device) if load_device is not None else torch_device()
        self.offload_device = torch.device(offload_device) if offload_device is not None else _offload_default()
        self.patcher = None
        if HOST_AVAILABLE and _ModelPatcher is not None:
            self.patcher = _ModelPatcher(_holder_for(module), load_device=self.load_device,
                                         offload_device=self.offload_device, size=int(size))

    @property
    def device(self) -> torch.device:
        """Device of the first parameter (or buffer); the offload device for a module without tensors."""
        for t in self.module.parameters():
            return t.device
        for t in self.module.buffers():
            return t.device
        return self.offload_device

    def load_to_gpu(self, extra_memory: int = 0) -> torch.nn.Module:
        """Put the module on ``load_device``, making room for it plus ``extra_memory`` bytes of activations.
        Returns the module."""
        if self.patcher is not None:
            _mm.load_models_gpu([self.patcher], memory_required=int(extra_memory), force_full_load=True)
        else:
            self.module.to(self.load_device)
        return self.module

    def offload(self) -> torch.nn.Module:
        """Move the module to ``offload_device`` (and drop it from ComfyUI's loaded-model list). Returns it."""
        if self.patcher is not None:
            done = False
            try:
                loaded = _mm.current_loaded_models
                for i in range(len(loaded) - 1, -1, -1):
                    if loaded[i].model is self.patcher:
                        loaded[i].model_unload()
                        loaded.pop(i)
                        done = True
            except Exception as e:  # pragma: no cover - internal API drift
                log.debug("model_unload failed (%s); moving the module by hand", e)
            if not done:
                self.module.to(self.offload_device)
        else:
            self.module.to(self.offload_device)
        return self.module


class ManagedPlacer:
    """A ``vscene_engine.video.model.Placer`` whose modules live under the host's memory manager.

    ``modules``: {name: torch.nn.Module}; each becomes a :class:`ManagedModule` (ModelPatcher under ComfyUI).
    ``mode``: "default" - load a module when used and leave it loaded (ComfyUI evicts it when memory is needed);
    "offload" - move it back to the offload device after every use (encode / denoise / decode never share
    memory); "sequential" - like offload, and the transformer is streamed block by block
    (``StreamingPlacer``) instead of loaded whole. ``extra_memory``: {name: bytes} reserved for activations.
    """

    MODES = ("default", "offload", "sequential")

    def __init__(self, modules: dict, mode: str = "default", extra_memory: dict | None = None):
        if mode not in self.MODES:
            raise ValueError(f"memory mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        self.extra = dict(extra_memory or {})
        self.managed = {name: ManagedModule(m, size=_module_bytes(m)) for name, m in modules.items()}

    @contextlib.contextmanager
    def use(self, name: str, module: torch.nn.Module):
        mm = self.managed.get(name)
        if mm is None or mm.module is not module:
            mm = self.managed[name] = ManagedModule(module, size=_module_bytes(module))
        if self.mode == "sequential" and name == "transformer":
            from vscene_engine.video.model import StreamingPlacer

            mm.offload()
            soft_empty_cache()
            with StreamingPlacer(mm.load_device, mm.offload_device).use(name, module) as m:
                yield m
            return
        mm.load_to_gpu(extra_memory=int(self.extra.get(name, 0)))
        try:
            yield mm.module
        finally:
            if self.mode != "default":
                mm.offload()
                soft_empty_cache()


def _module_bytes(m: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))


def _offload_default() -> torch.device:
    return offload_device()


# =========================================================================================== model folders
@dataclass
class _FolderSpec:
    subdir: str
    extensions: frozenset
    kind: str  # "files" | "diffusers"


_MODEL_FOLDERS: dict[str, _FolderSpec] = {}
_WEIGHT_EXTS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")


def _norm_exts(extensions) -> frozenset:
    out = set()
    for e in extensions or ():
        e = str(e).strip().lower()
        if e and not e.startswith("."):
            e = "." + e
        if e:
            out.add(e)
    return frozenset(out)


def register_model_folder(name: str, subdir: str, extensions: Sequence[str] = _WEIGHT_EXTS,
                          kind: str = "files") -> list[str]:
    """Register model folder ``name`` at ``<models>/<subdir>``; returns :func:`model_dirs`.

    ``extensions``: accepted file suffixes (".safetensors", ...; empty = any file). ``kind="diffusers"``:
    entries are sub-folders holding a diffusers model (``model_index.json`` or a ``transformer*/`` folder).
    Host: merged into ``folder_paths.folder_names_and_paths`` (paths from extra_model_paths.yaml or other packs,
    e.g. kijai's CogVideoXWrapper registering "CogVideo", are kept; an existing "any file" entry stays so).
    ``$VSCENE_MODELS_DIR/<subdir>`` is searched too when set. Fallback: ``$VSCENE_MODELS_DIR/<subdir>`` if set,
    else ``./models/<subdir>`` (relative to the working directory at call time).
    """
    if kind not in ("files", "diffusers"):
        raise ValueError(f"kind must be 'files' or 'diffusers', got {kind!r}")
    exts = _norm_exts(extensions)
    _MODEL_FOLDERS[name] = _FolderSpec(subdir, exts, kind)
    if HOST_AVAILABLE:
        default = os.path.join(_fp.models_dir, subdir)
        fnp = _fp.folder_names_and_paths
        if name in fnp:
            paths, old = fnp[name]
            if default not in paths:
                paths.append(default)
            old_set = set(old) if old is not None else set()
            if old_set and "folder" not in old_set:  # empty set means "any file" in folder_paths: keep it
                fnp[name] = (paths, old_set | set(exts))
        else:
            fnp[name] = ([default], set(exts) if kind == "files" else set())
        env = os.environ.get("VSCENE_MODELS_DIR", "").strip()
        if env:
            extra = os.path.join(os.path.abspath(env), subdir)
            if extra not in fnp[name][0]:
                fnp[name][0].append(extra)
    return model_dirs(name)


def _spec(name: str) -> _FolderSpec:
    if name not in _MODEL_FOLDERS:
        if HOST_AVAILABLE and name in _fp.folder_names_and_paths:
            return _FolderSpec(name, frozenset(_fp.folder_names_and_paths[name][1] or ()), "files")
        raise KeyError(f"unknown model folder {name!r}; registered: {sorted(_MODEL_FOLDERS)}")
    return _MODEL_FOLDERS[name]


def model_dirs(name: str) -> list[str]:
    """Absolute directories searched for model folder ``name``, in priority order (may not exist)."""
    spec = _spec(name)
    if HOST_AVAILABLE and name in _fp.folder_names_and_paths:
        return [os.path.abspath(p) for p in _fp.get_folder_paths(name)]
    env = os.environ.get("VSCENE_MODELS_DIR", "").strip()
    root = os.path.abspath(env) if env else os.path.abspath("models")
    return [os.path.join(root, spec.subdir)]


def _is_diffusers_dir(path: str) -> bool:
    if os.path.isfile(os.path.join(path, "model_index.json")):
        return True
    try:
        return any(e.is_dir() and e.name.startswith("transformer") for e in os.scandir(path))
    except OSError:
        return False


def list_models(name: str) -> list[str]:
    """Sorted names (relative to the folder, '/'-separated) available in model folder ``name``.

    Files kind: files with an accepted suffix, recursively. Diffusers kind: sub-folders (depth 1 or 2,
    e.g. "CogVideoX-5b-I2V" or "THUDM/CogVideoX-5b") that look like diffusers models.
    """
    spec = _spec(name)
    found: set[str] = set()
    for d in model_dirs(name):
        if not os.path.isdir(d):
            continue
        if spec.kind == "diffusers":
            for e in sorted(os.scandir(d), key=lambda e: e.name):
                if not e.is_dir() or e.name.startswith("."):
                    continue
                if _is_diffusers_dir(e.path):
                    found.add(e.name)
                else:
                    for e2 in os.scandir(e.path):
                        if e2.is_dir() and not e2.name.startswith(".") and _is_diffusers_dir(e2.path):
                            found.add(f"{e.name}/{e2.name}")
        else:
            for dirpath, dirnames, filenames in os.walk(d, followlinks=True):
                dirnames[:] = [x for x in dirnames if not x.startswith(".")]
                for f in filenames:
                    if spec.extensions and os.path.splitext(f)[1].lower() not in spec.extensions:
                        continue
                    found.add(os.path.relpath(os.path.join(dirpath, f), d).replace(os.sep, "/"))
    return sorted(found)


def _safe_rel_parts(value: str, what: str) -> list[str]:
    """Split a user-supplied relative path into components; ValueError on absolute paths, '..', NUL."""
    value = "" if value is None else str(value)
    if "\x00" in value:
        raise ValueError(f"{what} contains a NUL byte: {value!r}")
    if value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value) or os.path.isabs(value):
        raise ValueError(f"{what} must be a relative path, got absolute {value!r}")
    parts = [p for p in re.split(r"[\\/]+", value) if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValueError(f"{what} must not contain '..': {value!r}")
    return parts


def model_path(name: str, filename: str) -> str:
    """Absolute path of ``filename`` (a name from :func:`list_models`) in model folder ``name``.

    Raises FileNotFoundError naming every directory searched (and what is there), ValueError for an
    absolute or '..' name.
    """
    spec = _spec(name)
    parts = _safe_rel_parts(filename, "model filename")
    if not parts:
        raise ValueError("model filename is empty")
    dirs = model_dirs(name)
    for d in dirs:
        p = os.path.join(d, *parts)
        if spec.kind == "diffusers" and os.path.isdir(p):
            return p
        if spec.kind == "files" and os.path.isfile(p):
            return p
    what = "diffusers model folder" if spec.kind == "diffusers" else "model file"
    try:
        avail = list_models(name)
    except OSError:
        avail = []
    msg = (f"{what} {filename!r} not found for model folder {name!r}. Searched: "
           + ", ".join(dirs)
           + (f". Available: {', '.join(avail[:20])}{' ...' if len(avail) > 20 else ''}" if avail else
              ". Nothing is installed there")
           + f". Put it in {dirs[0] if dirs else 'models/' + spec.subdir}"
           + ("" if HOST_AVAILABLE else " (or set VSCENE_MODELS_DIR)") + ".")
    raise FileNotFoundError(msg)


# ======================================================================================== weight-file kinds
_HEADER_CACHE: dict = {}
_MAX_HEADER = 100 * 1024 * 1024


def safetensors_header(path: str) -> dict | None:
    """The JSON header of a ``.safetensors`` file ({tensor name: {"dtype", "shape", "data_offsets"}, and
    "__metadata__": {str: str}}), or None when ``path`` is not a readable safetensors file. Reads only the header
    (8-byte length + JSON), never the tensors; cached by (real path, mtime, size)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (os.path.realpath(path), st.st_mtime_ns, st.st_size)
    if key in _HEADER_CACHE:
        return _HEADER_CACHE[key]
    header = None
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
            if 2 <= n <= min(_MAX_HEADER, st.st_size - 8):
                import json

                h = json.loads(f.read(n))
                header = h if isinstance(h, dict) else None
    except (OSError, ValueError, UnicodeDecodeError):
        header = None
    if len(_HEADER_CACHE) > 512:
        _HEADER_CACHE.clear()
    _HEADER_CACHE[key] = header
    return header


def weights_kind(path: str) -> str:
    """What a weights file in models/videoscene holds, from its name and (safetensors) header only:

    "ddpnet" (metadata ``format`` "videoscene-ddpnet" or its training checkpoint), "prompt_embeds" (a .pt/.pth file,
    or a safetensors file of at most two tensors of rank 2-3, e.g. VideoScene's prompt embedding [1, 226, 4096]),
    "transformer" (any other safetensors file: student / transformer weights), or "unreadable" (a .safetensors /
    .sft file whose header cannot be read). Non-weight files (.json / .yaml) are "other".
    """
    ext = os.path.splitext(path)[1].lower()
    if ext in (".pt", ".pth"):
        return "prompt_embeds"
    if ext not in (".safetensors", ".sft"):
        return "other"
    h = safetensors_header(path)
    if h is None:
        return "unreadable"
    meta = h.get("__metadata__") or {}
    if str(meta.get("format", "")).startswith("videoscene-ddpnet"):
        return "ddpnet"
    tensors = {k: v for k, v in h.items() if k != "__metadata__" and isinstance(v, dict)}
    if 0 < len(tensors) <= 2 and all(2 <= len(v.get("shape", ())) <= 3 for v in tensors.values()):
        return "prompt_embeds"
    return "transformer"


def list_weights(name: str, kinds: Sequence[str]) -> list[str]:
    """:func:`list_models` of folder ``name`` restricted to the files whose :func:`weights_kind` is in ``kinds``
    (headers only, cached: cheap enough for INPUT_TYPES)."""
    out = []
    for n in list_models(name):
        try:
            p = model_path(name, n)
        except (OSError, ValueError):
            continue
        if weights_kind(p) in kinds:
            out.append(n)
    return out


register_model_folder("videoscene", "videoscene", _WEIGHT_EXTS + (".json", ".yaml"))
register_model_folder("CogVideo", "CogVideo", (), kind="diffusers")
register_model_folder("mvsplat", "mvsplat", _WEIGHT_EXTS)
register_model_folder("noposplat", "noposplat", _WEIGHT_EXTS)


# ========================================================================================== example inputs
EXAMPLE_INPUTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workflows", "input")
"""The pack's example photos (the two-photo templates open with them); scripts/make_example_photos.py makes them."""
EXAMPLE_INPUTS = ("videoscene_view_a.png", "videoscene_view_b.png")


def _copy_no_overwrite(src: str, dst: str) -> bool:
    """Copy ``src`` to ``dst`` unless ``dst`` exists; True when copied. Atomic: the bytes go to a temporary file in
    ``dst``'s folder, which is then hard-linked to ``dst`` (fails, leaving ``dst`` alone, if a file of that name
    appeared meanwhile); where hard links are not supported, ``dst`` is created exclusively (O_EXCL) and written."""
    if os.path.lexists(dst):
        return False
    with open(src, "rb") as f:
        data = f.read()
    folder = os.path.dirname(dst)
    tmp = os.path.join(folder, f".{os.path.basename(dst)}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, dst)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system
            try:
                fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(dst)
                raise
            return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def install_example_inputs(input_dir: str | None = None, src_dir: str = EXAMPLE_INPUTS_DIR,
                           names: Sequence[str] = EXAMPLE_INPUTS) -> list[str]:
    """Make the pack's example photos available to core LoadImage: copy each of ``names`` from ``src_dir`` into
    ``input_dir`` (default: ComfyUI's input directory; nothing without the host) when NO file of that name exists
    there — a user's file is never overwritten. Never raises (a read-only or missing input folder only logs one
    warning). Returns the names copied."""
    if input_dir is None:
        if not HOST_AVAILABLE:
            return []
        try:
            input_dir = _fp.get_input_directory()
        except Exception as e:  # pragma: no cover - defensive
            log.warning("VideoScene: no input directory (%s); example photos not installed", e)
            return []
    copied, failed = [], []
    for n in names:
        try:
            if _copy_no_overwrite(os.path.join(src_dir, n), os.path.join(input_dir, n)):
                copied.append(n)
        except Exception as e:
            failed.append(f"{n} ({type(e).__name__}: {e})")
    if copied:
        log.info("VideoScene: example photos %s copied to %s (the two-photo templates open with them)",
                 ", ".join(copied), input_dir)
    if failed:
        log.warning("VideoScene: could not copy example photos to %s: %s; upload your own photos in the templates' "
                    "Load Image nodes", input_dir, "; ".join(failed))
    return copied


if HOST_AVAILABLE:
    install_example_inputs()


# ============================================================================================ output files
def output_dir() -> str:
    """Absolute output directory (host: ``folder_paths.get_output_directory()``; fallback:
    $VSCENE_OUTPUT_DIR, else ./output)."""
    if HOST_AVAILABLE:
        return os.path.abspath(_fp.get_output_directory())
    env = os.environ.get("VSCENE_OUTPUT_DIR", "").strip()
    return os.path.abspath(env if env else "output")


def _inside(root_real: str, path: str) -> bool:
    try:
        target = os.path.realpath(path)
        return os.path.commonpath((root_real, target)) == root_real
    except ValueError:
        return False


_EXT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,15}$")


def output_path(subfolder: str = "", filename_prefix: str = "videoscene", ext: str = "png") -> str:
    """Fresh absolute path ``<output>/<subfolder>/<prefix dirs>/<name>_<00001>_.<ext>`` inside the output dir.

    ``filename_prefix`` may contain '/' (ComfyUI style "videoscene/render"). Absolute paths, '..' components
    and NUL bytes in ``subfolder``/``filename_prefix``, and directories that resolve (through symlinks)
    outside the output directory raise ValueError. Missing directories are created. The counter is one past
    the highest existing ``<name>_NNNNN`` file there; the file itself is not created (write it with
    :func:`atomic_path` / :func:`atomic_write_bytes`).
    """
    if str(filename_prefix).endswith(("/", "\\")):
        raise ValueError(f"filename_prefix must end with a file name, got {filename_prefix!r}")
    parts = _safe_rel_parts(subfolder, "subfolder") + _safe_rel_parts(filename_prefix, "filename_prefix")
    if not parts:
        raise ValueError("filename_prefix must name a file, got an empty prefix")
    ext = str(ext).lstrip(".")
    if not _EXT_RE.match(ext):
        raise ValueError(f"invalid file extension {ext!r}")
    root = output_dir()
    os.makedirs(root, exist_ok=True)
    root_real = os.path.realpath(root)
    folder = os.path.join(root, *parts[:-1])
    base = parts[-1]
    if not _inside(root_real, folder):
        raise ValueError(f"output folder {folder!r} resolves outside the output directory {root_real!r}")
    os.makedirs(folder, exist_ok=True)
    if not _inside(root_real, folder):  # re-check after creation (races / symlinked components)
        raise ValueError(f"output folder {folder!r} resolves outside the output directory {root_real!r}")
    pat = re.compile(re.escape(base) + r"_(\d+)(?:_)?(?:\.[^/\\]*)?$")
    counter = 0
    for f in os.listdir(folder):
        m = pat.match(f)
        if m:
            counter = max(counter, int(m.group(1)))
    while True:
        counter += 1
        path = os.path.join(folder, f"{base}_{counter:05d}_.{ext}")
        if not os.path.lexists(path):
            break
    if not _inside(root_real, path):
        raise ValueError(f"output file {path!r} resolves outside the output directory {root_real!r}")
    return path


def output_ui_entry(path: str, type: str = "output") -> dict:
    """``{"filename", "subfolder", "type"}`` for a file under :func:`output_dir` (the dicts that ComfyUI's
    ``ui`` results use for images/videos/3d files)."""
    root = os.path.realpath(output_dir())
    real = os.path.realpath(path)
    if os.path.commonpath((root, real)) != root:
        raise ValueError(f"{path!r} is not inside the output directory {root!r}")
    rel = os.path.relpath(real, root)
    sub = os.path.dirname(rel)
    return {"filename": os.path.basename(rel), "subfolder": sub.replace(os.sep, "/"), "type": type}


@contextlib.contextmanager
def atomic_path(path) -> Iterator[str]:
    """Context manager yielding a temporary path next to ``path`` (same directory, same suffix, so writers
    that pick a format from the extension still work). On a clean exit it is ``os.replace``-d onto ``path``;
    on an exception it is removed and ``path`` is left untouched. Missing parent directories are created.

    >>> with atomic_path("/out/a.mp4") as tmp:  # doctest: +SKIP
    ...     write_video(tmp)
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stem, suffix = os.path.splitext(os.path.basename(path))
    tmp = os.path.join(folder, f".{stem}.{uuid.uuid4().hex[:12]}.tmp{suffix}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, ``os.replace``).
    Returns ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return os.fspath(path)


# ================================================================================================== SPLAT
class LocalSPLAT:
    """Stand-in for ComfyUI's ``comfy_api.latest.Types.SPLAT`` when comfy_api is absent (same attributes).

    positions (B,N,3) world; scales (B,N,3) linear; rotations (B,N,4) wxyz; opacities (B,N,1) in [0,1];
    sh (B,N,K,3); counts (B,) int64 real lengths or None (all rows full). Rows are zero-padded past counts.
    """

    def __init__(self, positions, scales, rotations, opacities, sh, counts=None):
        self.positions = positions
        self.scales = scales
        self.rotations = rotations
        self.opacities = opacities
        self.sh = sh
        self.counts = counts

    def __repr__(self) -> str:
        return f"LocalSPLAT(B={self.positions.shape[0]}, N={self.positions.shape[1]}, K={self.sh.shape[2]})"


SPLAT_CLASS = getattr(_api_Types, "SPLAT", None) or LocalSPLAT
"""The class :func:`scene_to_splat` instantiates: the core SPLAT type when available, else LocalSPLAT."""


def _gaussian_scene_cls():
    # The pack's __init__.py registers the engine under its top-level name "vscene_engine" (tests put the repo
    # root on sys.path), so use that first: one module instance -> one GaussianScene class for every node.
    try:
        from vscene_engine.core.gaussians import GaussianScene
    except ImportError:
        from ..vscene_engine.core.gaussians import GaussianScene  # pack imported as a package without that registration
    return GaussianScene


#: Highest SH degree core's splat viewers and PLY readers accept (Preview Splat refuses 72 ``f_rest`` fields).
CORE_MAX_SH_DEGREE = 3


def scene_to_splat(scene_or_list, device=None, dtype: torch.dtype = torch.float32,
                   max_sh_degree: int | None = CORE_MAX_SH_DEGREE):
    """GaussianScene or list of them -> core SPLAT (batch B = number of scenes).

    ``max_sh_degree``: scenes of a higher SH degree (MVSplat predicts degree 4) keep only their first
    ``(max_sh_degree + 1)**2`` coefficients, because core's splat viewer (Preview Splat) refuses degree 4 PLYs; None
    keeps everything.

    Output tensors: positions (B,N,3), scales (B,N,3), rotations (B,N,4) wxyz, opacities (B,N,1), sh (B,N,K,3)
    with N = max scene length and K = max SH coefficient count (lower degrees zero-padded, like core
    MergeSplat); rows past a scene's length are zero; ``counts`` (B,) int64 when lengths differ, else None.
    Placed on ``device`` (default :func:`intermediate_device`) as ``dtype`` (default float32).
    """
    scenes = list(scene_or_list) if isinstance(scene_or_list, (list, tuple)) else [scene_or_list]
    if not scenes:
        raise ValueError("scene_to_splat needs at least one scene")
    if max_sh_degree is not None:
        scenes = [s.with_sh_degree(min(s.sh_degree, int(max_sh_degree))) for s in scenes]
    device = torch.device(device) if device is not None else intermediate_device()
    lengths = [int(s.means.shape[0]) for s in scenes]
    n = max(lengths)
    k = max(int(s.sh.shape[1]) for s in scenes)
    b = len(scenes)
    z = lambda *shape: torch.zeros(shape, device=device, dtype=dtype)
    pos, scl, rot, opa, sh = z(b, n, 3), z(b, n, 3), z(b, n, 4), z(b, n, 1), z(b, n, k, 3)
    for i, s in enumerate(scenes):
        m = lengths[i]
        cv = lambda t: t.detach().to(device=device, dtype=dtype)
        pos[i, :m] = cv(s.means)
        scl[i, :m] = cv(s.scales)
        rot[i, :m] = cv(s.quats)
        opa[i, :m, 0] = cv(s.opacities).reshape(m)
        sh[i, :m, : s.sh.shape[1]] = cv(s.sh)
    counts = torch.tensor(lengths, dtype=torch.int64, device=device) if len(set(lengths)) > 1 else None
    return SPLAT_CLASS(pos, scl, rot, opa, sh, counts=counts)


def splat_to_scenes(splat, device=None, dtype: torch.dtype | None = None) -> list:
    """Core SPLAT (or anything with its attributes) -> list of B GaussianScene, padding rows removed.

    means [n_i,3], scales [n_i,3], quats [n_i,4] wxyz, opacities [n_i], sh [n_i,K,3]. Tensors keep the
    SPLAT's device/dtype unless ``device``/``dtype`` are given. A K that is not a square (d+1)^2 is padded
    up with zero coefficients.
    """
    GaussianScene = _gaussian_scene_cls()
    pos = splat.positions
    if pos.dim() == 2:  # tolerate an unbatched SPLAT
        get = lambda a: a[None]
    else:
        get = lambda a: a
    P, S, R, O, H = (get(splat.positions), get(splat.scales), get(splat.rotations), get(splat.opacities),
                     get(splat.sh))
    b, n = P.shape[0], P.shape[1]
    counts = getattr(splat, "counts", None)
    k = H.shape[2]
    d = math.isqrt(k) - 1
    if (d + 1) ** 2 != k:
        d += 1
    k_full = (d + 1) ** 2
    out = []
    for i in range(b):
        m = int(counts[i]) if counts is not None else n
        sh = H[i, :m]
        if k_full != k:
            sh = torch.cat([sh, sh.new_zeros(m, k_full - k, 3)], dim=1)
        sc = GaussianScene(means=P[i, :m], scales=S[i, :m], quats=R[i, :m], opacities=O[i, :m].reshape(m), sh=sh)
        if device is not None or dtype is not None:
            sc = sc.to(device=device, dtype=dtype)
        out.append(sc)
    return out


# ================================================================================================== VIDEO
@dataclass
class LocalVideo:
    """Stand-in for ComfyUI's VIDEO (``VideoFromComponents``) outside ComfyUI: frames [F,H,W,3] 0..1, fps."""

    frames: torch.Tensor
    fps: float

    @property
    def images(self) -> torch.Tensor:
        return self.frames

    @property
    def frame_rate(self) -> Fraction:
        return _fps_fraction(self.fps)

    def get_components(self) -> "LocalVideo":
        return self

    def get_dimensions(self) -> tuple[int, int]:
        """(width, height) like ``VideoInput.get_dimensions``."""
        return int(self.frames.shape[2]), int(self.frames.shape[1])

    def get_duration(self) -> float:
        return float(self.frames.shape[0]) / float(self.fps)


def _fps_fraction(fps) -> Fraction:
    return Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps


def frames_to_video(frames: torch.Tensor, fps: float):
    """Frames [F, H, W, 3] float in 0..1 (IMAGE batch) + fps -> a VIDEO value for a node output.

    Host: ``comfy_api.latest.InputImpl.VideoFromComponents(Types.VideoComponents(images=frames,
    frame_rate=Fraction(fps)))`` - what core CreateVideo returns. Fallback: :class:`LocalVideo`.
    Frames are moved to the CPU as float32 and clamped; ValueError on a bad shape or fps.
    Odd widths/heights are accepted here but core SaveVideo's default H.264/yuv420p encoder rejects them
    (avcodec_open2 error at save time): render even sizes (a warning is logged).
    """
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be a [F,H,W,3] tensor, got "
                         f"{tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__}")
    if frames.shape[0] < 1:
        raise ValueError("frames must contain at least one frame")
    fps_f = float(fps)
    if not math.isfinite(fps_f) or fps_f <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    frames = frames.detach().to(device="cpu", dtype=torch.float32).clamp(0, 1).contiguous()
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        log.warning("frames_to_video: %dx%d has an odd side; H.264 (yuv420p) saving needs even width and "
                    "height", frames.shape[2], frames.shape[1])
    if _api_InputImpl is not None and _api_Types is not None:
        comps = _api_Types.VideoComponents(images=frames, frame_rate=_fps_fraction(fps_f))
        return _api_InputImpl.VideoFromComponents(comps)
    return LocalVideo(frames=frames, fps=fps_f)


def describe() -> dict:
    """Diagnostics: which host pieces were found and the current devices."""
    return {
        "host_available": HOST_AVAILABLE,
        "model_patcher": _ModelPatcher is not None,
        "comfy_api": _api_Types is not None,
        "splat_class": f"{SPLAT_CLASS.__module__}.{SPLAT_CLASS.__qualname__}",
        "torch_device": str(torch_device()),
        "offload_device": str(offload_device()),
        "intermediate_device": str(intermediate_device()),
        "output_dir": output_dir(),
    }


# =========================================================================================== GUIDER base
# Core's CFGGuider and the few sampling helpers a guider needs (nodes/guider.py subclasses CFGGuider and calls these).
# Without the host: stand-ins with core's signatures, enough to drive a guider in tests. Their model contract: a
# "model patcher" has .model (the inner model), .model_options (dict), .load_device, pre_run(), cleanup(); the
# inner model has apply_model(x, sigma, cond_list) -> x0, process_latent_in(z) and process_latent_out(z).
def convert_cond(cond) -> list:
    """CONDITIONING [[tensor, dict], ...] -> core's list of cond dicts (cross_attn, model_conds, uuid)."""
    if _sh is not None:
        return _sh.convert_cond(cond)
    out = []
    for c in cond:
        temp = dict(c[1])
        temp["model_conds"] = temp.get("model_conds", {})
        if c[0] is not None:
            temp["cross_attn"] = c[0]
        temp["uuid"] = uuid.uuid4()
        out.append(temp)
    return out


def prepare_sampling(model_patcher, noise_shape, conds: dict, model_options: dict):
    """(inner model, conds, loaded models) with the model loaded for sampling (core: sampler_helpers)."""
    if _sh is not None:
        return _sh.prepare_sampling(model_patcher, noise_shape, conds, model_options)
    return model_patcher.model, conds, []


def cleanup_models(conds: dict, models) -> None:
    """Release what prepare_sampling loaded (core: sampler_helpers)."""
    if _sh is not None:
        _sh.cleanup_models(conds, models)


def process_conds(model, noise, conds: dict, device, latent_image=None, denoise_mask=None, seed=None,
                  latent_shapes=None) -> dict:
    """Conds prepared for a noise batch (core: areas, timesteps, the model's extra conds); stand-in: copies."""
    if _cs is not None:
        return _cs.process_conds(model, noise, conds, device, latent_image, denoise_mask, seed,
                                 latent_shapes=latent_shapes)
    return {k: list(v) for k, v in conds.items()}


def calc_cond_batch(model, conds: list, x, timestep, model_options: dict) -> list:
    """The model's x0 for each cond list of ``conds`` at x [B, ...], timestep (sigma) [B] (core: samplers)."""
    if _cs is not None:
        return _cs.calc_cond_batch(model, conds, x, timestep, model_options)
    return [model.apply_model(x, timestep, c) for c in conds]


def cfg_function(model, cond_pred, uncond_pred, cond_scale: float, x, timestep, model_options: dict = {},
                 cond=None, uncond=None):
    """Classifier-free guidance uncond + scale (cond - uncond) with the model's cfg hooks (core: samplers)."""
    if _cs is not None:
        return _cs.cfg_function(model, cond_pred, uncond_pred, cond_scale, x, timestep,
                                model_options=model_options, cond=cond, uncond=uncond)
    return uncond_pred + (cond_pred - uncond_pred) * cond_scale


class _StandInCFGGuider:
    """Stand-in for ``comfy.samplers.CFGGuider`` (same methods and call order, none of core's model management,
    hooks or wrappers): sample -> outer_sample (prepare the model) -> inner_sample (process conds, run
    ``sampler.sample(guider, sigmas, extra_args, callback, noise, latent, denoise_mask, disable_pbar)``, which calls
    the guider as ``guider(x, sigma [B], **extra_args)`` -> predict_noise)."""

    def __init__(self, model_patcher):
        self.model_patcher = model_patcher
        self.model_options = model_patcher.model_options
        self.original_conds: dict = {}
        self.cfg = 1.0

    def set_conds(self, positive, negative) -> None:
        self.inner_set_conds({"positive": positive, "negative": negative})

    def set_cfg(self, cfg: float) -> None:
        self.cfg = cfg

    def inner_set_conds(self, conds: dict) -> None:
        for k in conds:
            self.original_conds[k] = convert_cond(conds[k])

    def __call__(self, *args, **kwargs):
        return self.outer_predict_noise(*args, **kwargs)

    def outer_predict_noise(self, x, timestep, model_options={}, seed=None):
        return self.predict_noise(x, timestep, model_options, seed)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        pos, neg = self.conds.get("positive"), self.conds.get("negative")
        if neg is None or math.isclose(self.cfg, 1.0):
            return calc_cond_batch(self.inner_model, [pos], x, timestep, model_options)[0]
        c, u = calc_cond_batch(self.inner_model, [pos, neg], x, timestep, model_options)
        return cfg_function(self.inner_model, c, u, self.cfg, x, timestep, model_options, cond=pos, uncond=neg)

    def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                     latent_shapes=None):
        if latent_image is not None and torch.count_nonzero(latent_image) > 0:
            latent_image = self.inner_model.process_latent_in(latent_image)
        self.conds = process_conds(self.inner_model, noise, self.conds, device, latent_image, denoise_mask, seed,
                                   latent_shapes=latent_shapes)
        extra_args = {"model_options": dict(self.model_options), "seed": seed}
        samples = sampler.sample(self, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
        return self.inner_model.process_latent_out(samples.to(torch.float32))

    def outer_sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                     disable_pbar=False, seed=None, latent_shapes=None):
        self.inner_model, self.conds, self.loaded_models = prepare_sampling(self.model_patcher, noise.shape,
                                                                            self.conds, self.model_options)
        device = self.model_patcher.load_device
        try:
            self.model_patcher.pre_run()
            output = self.inner_sample(noise.to(device=device, dtype=torch.float32),
                                       latent_image.to(device=device, dtype=torch.float32), device, sampler,
                                       sigmas.to(device), denoise_mask, callback, disable_pbar, seed,
                                       latent_shapes=latent_shapes)
        finally:
            self.model_patcher.cleanup()
        cleanup_models(self.conds, self.loaded_models)
        del self.inner_model
        del self.loaded_models
        return output

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
               seed=None):
        if sigmas.shape[-1] == 0:
            return latent_image
        self.conds = {k: [c.copy() for c in v] for k, v in self.original_conds.items()}
        return self.outer_sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                                 latent_shapes=[latent_image.shape])


CFGGuider = _cs.CFGGuider if _cs is not None else _StandInCFGGuider
"""The base class of the pack's guiders: ``comfy.samplers.CFGGuider`` inside ComfyUI, else the stand-in."""
