"""Layer 8, the timestep policy: DDPNet.

Layer map: ``vscene_engine/__init__.py``."""
