"""ComfyUI nodes of the VideoScene pack (classic node protocol). Thin: parse inputs, call vscene_engine, wrap outputs.

Only ``host.py`` talks to ComfyUI; the node classes here run without it (CI). Imported relatively by the pack's
``__init__.py`` — never as a top-level ``nodes`` package (ComfyUI owns that name).
"""
from .splat_nodes import NODE_CLASS_MAPPINGS as _SPLAT, NODE_DISPLAY_NAME_MAPPINGS as _SPLAT_NAMES

NODE_CLASS_MAPPINGS = {**_SPLAT}
NODE_DISPLAY_NAME_MAPPINGS = {**_SPLAT_NAMES}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
