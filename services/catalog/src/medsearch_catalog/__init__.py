"""MedSearch catalog: the source of truth for images and their metadata."""
