"""Layer 7, the video model: VideoModel, its noise schedule, loading, the one-step leap student and the teacher.

Layer map: ``vscene_engine/__init__.py``."""
