"""videoscene engine: pure torch + numpy (no ComfyUI imports). See DESIGN.md for the conventions."""
