"""benchmarks/triton_engine.py's report: each engine row's ratios against the worker row of the same step."""

from __future__ import annotations

from typing import Any

from benchmarks.triton_engine import report


def step(concurrency: int, throughput: float, p50: float, cpu: tuple[float, float, float], requests: float) -> Any:
    return {
        "concurrency": concurrency,
        "throughput": throughput,
        "latency_ms": {"p50": p50},
        "errors": {},
        "server_cpu_us": dict(zip(("workers", "engine", "triton"), cpu, strict=True)),
        "triton_per_request": {"requests": requests, "inferences": 1.0, "executions": min(requests, 0.5)},
        "triton_busy": 0.5,
    }


def test_engine_rows_carry_ratios_against_the_workers_row_of_the_same_step() -> None:
    results = {
        "tiny": [
            {"client": "worker", "route": "/v2", "step": step(32, 400.0, 50.0, (900.0, 0.0, 500.0), 1.0)},
            {"client": "engine", "route": "/v2", "step": step(32, 500.0, 40.0, (600.0, 200.0, 200.0), 0.25)},
            # Triton counts a batch's compute once per request in it: 2 requests per execution, 40% busy.
            {
                "client": "worker",
                "route": "/v2",
                "step": {**step(1, 9.0, 1.0, (1.0, 0.0, 1.0), 1.0), "triton_busy": 0.8},
            },
        ],
        "densenet": [],
    }
    text = report(results, "python -m benchmarks.triton_engine", "2026-11-26 23:38 UTC")
    assert "* date: 2026-11-26 23:38 UTC (the last run)" in text
    rows = [line for line in text.splitlines() if line.startswith("| /v2 |")]
    assert rows[0].endswith("| 25% | 0 | 1 | 1 | 1 |")
    assert rows[2].startswith("| /v2 | 1 | worker |") and "| 40% |" in rows[2]
    cells = [c.strip() for c in rows[1].strip("|").split("|")]
    assert cells[:10] == ["/v2", "32", "engine", "500", "40.00", "1,000", "600", "200", "200", "0.25"]
    assert cells[-3:] == ["1.25", "0.80", "0.71"]  # req/s, p50 and server CPU, engine / worker


def test_a_merged_report_names_the_last_command_that_ran_each_part() -> None:
    from benchmarks.triton_engine import latest_commands

    run = "python -m benchmarks.triton_engine"
    commands = f"{run}; {run} --parts densenet --rounds 3; {run} --parts densenet --duration 30 --merge"
    assert latest_commands(commands) == f"{run}; {run} --parts densenet --duration 30 --merge"
    assert latest_commands(f"{run} --parts tiny,densenet") == f"{run} --parts tiny,densenet"
