"""ComfyUI nodes of the VideoScene pack (classic node protocol). Thin: parse inputs, call vscene_engine, wrap outputs.

Only ``host.py`` talks to ComfyUI; the node classes here run without it (CI). Imported relatively by the pack's
``__init__.py`` — never as a top-level ``nodes`` package (ComfyUI owns that name).
"""
from . import compose_nodes, ddpnet_nodes, pipeline_nodes, splat_nodes, video_nodes

NODE_CLASS_MAPPINGS = {**pipeline_nodes.NODE_CLASS_MAPPINGS, **splat_nodes.NODE_CLASS_MAPPINGS,
                       **video_nodes.NODE_CLASS_MAPPINGS, **ddpnet_nodes.NODE_CLASS_MAPPINGS,
                       **compose_nodes.NODE_CLASS_MAPPINGS}
NODE_DISPLAY_NAME_MAPPINGS = {**pipeline_nodes.NODE_DISPLAY_NAME_MAPPINGS, **splat_nodes.NODE_DISPLAY_NAME_MAPPINGS,
                              **video_nodes.NODE_DISPLAY_NAME_MAPPINGS,
                              **ddpnet_nodes.NODE_DISPLAY_NAME_MAPPINGS,
                              **compose_nodes.NODE_DISPLAY_NAME_MAPPINGS}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
