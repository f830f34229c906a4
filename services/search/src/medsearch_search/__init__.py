"""MedSearch search: Milvus collections per model_id, k-NN search with structured filters."""
