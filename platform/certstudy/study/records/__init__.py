"""Records of a study: record names, MLflow tracking, the stored-state readers, digests, status,
export, the model registry and the study lock.

The middle floor of the study layer: it imports the spec floor, never the engine.
"""
