"""Layer 1, the engine's vocabulary: cameras, Gaussian scenes, SH, the progress/interrupt protocol, torchrun helpers, atomic writes.

Layer map: ``vscene_engine/__init__.py``."""
