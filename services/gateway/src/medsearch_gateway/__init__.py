"""MedSearch gateway: the web UI and the public API, orchestrating embedder, search and catalog."""
