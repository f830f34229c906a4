"""MedSearch embedder: model-specific preprocessing and inference (ResNet-50)."""
