"""runtime.logs: what a record carries reaches both formats."""

from __future__ import annotations

import json
import logging

from runtime import logs


def test_json_lines_keep_the_stack_a_record_asked_for() -> None:
    """logger.warning(..., stack_info=True): the text format printed the stack, the JSON format dropped it."""
    stack = 'Stack (most recent call last):\n  File "score.py", line 7, in run'
    record = logging.getLogger("score").makeRecord(
        "score", logging.WARNING, "score.py", 7, "odd", None, None, sinfo=stack
    )
    assert logs.TextFormatter().format(record).endswith(f" score - odd\n{stack}")
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["message"] == "odd" and line["stack"] == stack
