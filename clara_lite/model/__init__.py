"""The model: base-model registry, ClaraModel, and its two on-disk formats (ours and upstream CLaRa)."""
