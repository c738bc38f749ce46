"""Hook style: postprocess streams, as a bare generator or as a Starlette StreamingResponse."""

import numpy as np
from starlette.responses import StreamingResponse

from runtime import InferRequest


def preprocess(request):
    return InferRequest("linear", {"x": np.zeros((1, 4), dtype=np.float32)})


def words(outputs):
    yield "alpha "
    yield f"beta {len(outputs['y'][0])}"


def postprocess(request, outputs):
    kind = request.query.get("kind", "generator")
    if kind == "starlette":
        return StreamingResponse(iter([b"s1,", b"s2"]), status_code=202, media_type="application/x-ndjson")
    if kind == "bytes":
        return iter([b"\x00\x01", b"\x02"])
    return words(outputs)
