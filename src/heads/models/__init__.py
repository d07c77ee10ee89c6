"""Head architectures trained by stage two (MindEye2 + TextAlign)."""
