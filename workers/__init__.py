"""What a Dask worker holds: CLIP backbone, attention methods, SimFeatUp, text
embeddings, the crop segmenter and the per-process model cache (SPEC section 2)."""
