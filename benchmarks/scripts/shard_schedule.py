"""How busy the dynamic batcher keeps a sharded instance's shards, with a simulated model, so that the
machine's core count does not limit what is measured (a 16-shard instance is what a 16-core server runs).

    python benchmarks/scripts/shard_schedule.py [--shards 2,8,16] [--clients 64] [--seconds 5]
    git worktree add /tmp/before <commit>
    python benchmarks/scripts/shard_schedule.py --checkout /tmp/before

Each piece of a batch "runs" for 10 ms per request times a random factor in [0.5, 1.5] (an asyncio
sleep, so shards take no core), with max_batch_size 16 and closed-loop clients. Per shard count:
requests/s and the share of the shards' time spent running pieces, both over the whole run (until the
last client has its answer); with ``--checkout``, the same for that checkout's batcher, run as a
subprocess, and the ratio of the two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PER_REQUEST_S = 0.01
MAX_BATCH_SIZE = 16


async def simulate(shards: int, clients: int, seconds: float) -> dict[str, float]:
    from runtime.serving.batching import DynamicBatcher, Tensors, join

    draw = random.Random(1)
    busy = 0.0

    async def execute(instance: int, parts: list[Tensors]) -> Tensors:
        nonlocal busy
        x = join(parts)["x"]
        cost = x.shape[0] * PER_REQUEST_S * draw.uniform(0.5, 1.5)
        busy += cost
        await asyncio.sleep(cost)
        return {"y": x}

    batcher = DynamicBatcher(execute, instances=1, max_batch_size=MAX_BATCH_SIZE, shards=lambda _: shards)
    batcher.start()
    answered = 0
    end = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal answered
        while time.perf_counter() < end:
            await batcher.submit({"x": np.zeros((1, 2), np.float32)})
            answered += 1

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    # Over the whole run: requests sent before the end are answered after it (over `seconds`, 2 shards were
    # "busy 1.21" in a 1 s run).
    elapsed = time.perf_counter() - start
    await batcher.stop()
    return {"rate": answered / elapsed, "busy": busy / (elapsed * shards)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default="2,8,16")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--checkout", type=Path, help="also measure the batcher of this checkout")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one result, for --checkout
    args = parser.parse_args()
    for shards in [int(n) for n in args.shards.split(",")]:
        ours = asyncio.run(simulate(shards, args.clients, args.seconds))
        if args.json:
            print(json.dumps(ours))
            return
        line = f"{shards:2} shards, {args.clients} clients: {ours['rate']:7.1f} req/s, shards busy {ours['busy']:.2f}"
        if args.checkout is not None:
            argv = [sys.executable, __file__, "--shards", str(shards), "--clients", str(args.clients)]
            argv += ["--seconds", str(args.seconds), "--json"]
            env = {**os.environ, "PYTHONPATH": str(args.checkout)}
            out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
            theirs = json.loads(out.stdout)
            line += f"; {args.checkout}: {theirs['rate']:7.1f} req/s, busy {theirs['busy']:.2f}"
            line += f"; ratio {ours['rate'] / theirs['rate']:.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    if "--json" not in sys.argv:
        sys.path.insert(0, str(REPO))
    main()
