"""Layer 9, composed sampling: Diffusion^2 (video x multi-view) and VideoMV's 3D-aware denoising.

Layer map: ``vscene_engine/__init__.py``."""
