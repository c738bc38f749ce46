"""Ask a running server a question, at /score (plain HTTP) or /v2 (tritonclient).

python examples/bidaf_onnx/client.py [--url http://127.0.0.1:5001] [--v2] [CONTEXT QUERY]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONTEXT = "A quick brown fox jumps over the lazy dog."
QUERY = "What color is the fox?"


# runtime serve's port: SERVER_PORT, else 5001.
DEFAULT_URL = f"http://127.0.0.1:{os.environ.get('SERVER_PORT', '5001')}"
NO_ENTRY = "; a server started with --model-dir only has no /score: serve score_bidaf.py (--entry) or use --v2"
NO_MODEL = "; score.py was served without its model: add --model-dir examples/bidaf_onnx/models to runtime serve"


def via_score(url: str, context: str, query: str) -> object:
    body = json.dumps({"context": context, "query": query}).encode()
    request = urllib.request.Request(f"{url}/score", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def via_v2(url: str, context: str, query: str) -> object:
    import tritonclient.http as triton

    sys.path.insert(0, str(HERE))
    import tokens  # beside this file; with nltk, only the v2 path tokenizes here

    context_tokens, inputs = tokens.parse({"context": context, "query": query})
    tensors = []
    for name, value in inputs.items():
        tensor = triton.InferInput(name, list(value.shape), "BYTES")
        tensor.set_data_from_numpy(value, binary_data=True)
        tensors.append(tensor)
    client = triton.InferenceServerClient(url.split("://", 1)[-1])
    result = client.infer("bidaf_onnx", tensors)
    return tokens.answer(context_tokens, {n: result.as_numpy(n) for n in ("start_pos", "end_pos")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("context", nargs="?", default=CONTEXT)
    parser.add_argument("query", nargs="?", default=QUERY)
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the server (default: {DEFAULT_URL})")
    parser.add_argument("--v2", action="store_true", help="tritonclient to /v2/models/bidaf_onnx/infer")
    args = parser.parse_args()
    call = via_v2 if args.v2 else via_score
    try:
        print(json.dumps(call(args.url, args.context, args.query)))
    except urllib.error.HTTPError as ex:
        body = ex.read().decode(errors="replace")
        hint = (NO_MODEL if "No backend serves a model" in body else NO_ENTRY) if ex.code == 404 else ""
        sys.exit(f"{ex.url}: HTTP {ex.code} {body}{hint}")
    except (urllib.error.URLError, ConnectionError) as ex:
        sys.exit(f"cannot reach {args.url}: {ex} (is runtime serve running?)")


if __name__ == "__main__":
    main()
