"""Layer 10, training: VideoScene's leap-flow consistency distillation.

Layer map: ``vscene_engine/__init__.py``."""
