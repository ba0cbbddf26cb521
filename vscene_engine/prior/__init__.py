"""Layer 5, the coarse 3DGS prior from two views: stereo, depth maps, MVSplat, NoPoSplat.

Layer map: ``vscene_engine/__init__.py``."""
