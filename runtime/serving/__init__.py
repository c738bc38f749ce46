"""The model-serving wing: the model repository, tensors and datatypes, batching, and the Triton server."""
