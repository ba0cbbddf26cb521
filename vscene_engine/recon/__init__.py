"""Layer 6, reconstruction: fitting a Gaussian scene to images with known cameras.

Layer map: ``vscene_engine/__init__.py``."""
