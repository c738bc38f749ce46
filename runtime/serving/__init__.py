"""The model-serving wing: the model repository, tensors and datatypes, batching, the platforms that run
models (ONNX, TorchScript), and the Triton server."""
