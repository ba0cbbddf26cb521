"""VideoScene for ComfyUI — node pack entry point.

ComfyUI imports this folder as a package (custom_nodes/<folder>/__init__.py) and reads NODE_CLASS_MAPPINGS /
NODE_DISPLAY_NAME_MAPPINGS. The ComfyUI-facing nodes live in ``./nodes`` and are imported relatively (ComfyUI has its own
top-level module called ``nodes``; ours is never importable under that name). The host-independent torch engine
``vscene_engine`` is registered under its own top-level name from this folder (no sys.path change), unless an installed
copy was already imported.
"""
import importlib.util
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _ensure_engine() -> None:
    if "vscene_engine" in sys.modules:
        return
    init = _HERE / "vscene_engine" / "__init__.py"
    spec = importlib.util.spec_from_file_location("vscene_engine", init, submodule_search_locations=[str(init.parent)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["vscene_engine"] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception:
        sys.modules.pop("vscene_engine", None)
        raise


_ensure_engine()

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
