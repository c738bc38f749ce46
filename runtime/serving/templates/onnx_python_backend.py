"""Triton python-backend model that runs an ONNX file with onnxruntime.

Generated into a staged repository by ``runtime serve --triton managed`` when
the tritonserver at hand has no onnxruntime backend (the pip-installed
server has only the python backend). Triton's dynamic batcher hands
``execute`` several requests at once; they are joined along the batch
dimension into one session call, as the onnxruntime backend would.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.max_batch_size = int(config.get("max_batch_size", 0))
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
        options = ort.SessionOptions()
        cores = os.cpu_count() or 1
        options.intra_op_num_threads = int(os.environ.get("RUNTIME_ORT_THREADS", max(1, cores // instances)))
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self.inputs = []
        for tensor in config["input"]:
            reshape = tensor.get("reshape", {}).get("shape")
            self.inputs.append((tensor["name"], tensor["data_type"] == "TYPE_STRING", reshape))
        self.outputs = []
        for tensor in config["output"]:
            self.outputs.append(
                (tensor["name"], tensor["data_type"] == "TYPE_STRING", [int(d) for d in tensor["dims"]])
            )

    def _feeds(self, requests):
        feeds = {}
        for name, is_string, reshape in self.inputs:
            arrays = [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
            value = np.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]
            if reshape is not None:
                lead = value.shape[:1] if self.max_batch_size > 0 else ()
                value = value.reshape(tuple(lead) + tuple(int(d) for d in reshape))
            if is_string:
                decode = np.vectorize(lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b))
                value = decode(value).astype(object)
            feeds[name] = value
        return feeds

    def _run(self, requests):
        names = [name for name, _, _ in self.outputs]
        results = self.session.run(names, self._feeds(requests))
        sizes = [pb_utils.get_input_tensor_by_name(r, self.inputs[0][0]).as_numpy().shape[0] for r in requests]
        responses, offset = [], 0
        for size in sizes:
            tensors = []
            for (name, is_string, dims), value in zip(self.outputs, results, strict=True):
                part = value[offset : offset + size] if self.max_batch_size > 0 else value
                if self.max_batch_size > 0:
                    part = part.reshape((size, *dims))
                if is_string:
                    encode = np.vectorize(lambda s: s.encode("utf-8") if isinstance(s, str) else bytes(s))
                    part = encode(part).astype(object)
                tensors.append(pb_utils.Tensor(name, np.ascontiguousarray(part)))
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            offset += size
        return responses

    def _signature(self, request):
        return tuple(
            (name, pb_utils.get_input_tensor_by_name(request, name).as_numpy().shape[1:]) for name, _, _ in self.inputs
        )

    def execute(self, requests):
        if self.max_batch_size == 0:
            groups = [[i] for i in range(len(requests))]
        else:
            # Requests whose non-batch dimensions differ cannot share a session call.
            by_shape = {}
            for i, request in enumerate(requests):
                by_shape.setdefault(self._signature(request), []).append(i)
            groups = list(by_shape.values())
        responses = [None] * len(requests)
        for group in groups:
            try:
                for i, response in zip(group, self._run([requests[i] for i in group]), strict=True):
                    responses[i] = response
            except Exception as ex:  # one failing group fails only its own requests
                for i in group:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"onnxruntime: {ex}"))
        return responses
