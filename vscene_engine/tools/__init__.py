"""Layer 12, commands: ``python -m vscene_engine`` (cli), the demo, the miniature replication, synthetic scenes, tiny models.

Layer map: ``vscene_engine/__init__.py``."""
