"""Layer 3, rendering Gaussians: projection, the rasterizer backends, photometric losses.

Layer map: ``vscene_engine/__init__.py``."""
