"""clara_lite: train and serve CLaRa-style compressed-document RAG models."""

__version__ = "0.1.0"
