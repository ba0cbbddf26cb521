"""Layer 2, files: camera formats, PLY, images, video files, checkpoints (read safely).

Layer map: ``vscene_engine/__init__.py``."""
