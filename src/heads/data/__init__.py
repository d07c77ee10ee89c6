"""Dataset readers for stage two, kept apart from models (torch_brain style)."""
