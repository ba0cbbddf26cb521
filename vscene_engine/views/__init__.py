"""Layer 4, the two photos and their cameras: view pair, relative pose, camera paths, Depth Anything 3 geometry.

Layer map: ``vscene_engine/__init__.py``."""
