"""BiDAF's pre- and post-processing, as the ONNX model zoo documents it, with nltk and no downloads.

nltk's ``word_tokenize`` needs the punkt data; ``NLTKWordTokenizer`` (the word
tokenizer inside it) needs none.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from nltk.tokenize import NLTKWordTokenizer

from runtime import BadRequest

_tokenizer = NLTKWordTokenizer()


def tokenize(text: str) -> list[str]:
    return _tokenizer.tokenize(text)


def tensors(tokens: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Lower-cased words [seq,1] and characters [seq,1,1,16] (cut or padded with ''), as string tensors."""
    words = np.asarray([t.lower() for t in tokens], dtype=object).reshape(-1, 1)
    chars = [list(t)[:16] + [""] * (16 - len(t[:16])) for t in tokens]
    return words, np.asarray(chars, dtype=object).reshape(-1, 1, 1, 16)


def parse(body: Any) -> tuple[list[str], dict[str, np.ndarray]]:
    """The context tokens and the model inputs for {"context": ..., "query": ...}; 400 on bad input."""
    if not isinstance(body, dict):
        raise BadRequest('expected a JSON object {"context": "...", "query": "..."}')
    fields = {}
    for name in ("context", "query"):
        value = body.get(name)
        if value is None:
            raise BadRequest(f'missing field "{name}": expected {{"context": "...", "query": "..."}}')
        if not isinstance(value, str):
            raise BadRequest(f'field "{name}" must be a string')
        tokens = tokenize(value)
        if not tokens:
            raise BadRequest(f'field "{name}" has no tokens: it is empty or only spaces')
        fields[name] = tokens
    context_word, context_char = tensors(fields["context"])
    query_word, query_char = tensors(fields["query"])
    inputs = {
        "context_word": context_word,
        "context_char": context_char,
        "query_word": query_word,
        "query_char": query_char,
    }
    return fields["context"], inputs


def answer(context_tokens: list[str], outputs: dict[str, np.ndarray]) -> dict[str, str]:
    start = int(np.asarray(outputs["start_pos"]).reshape(-1)[0])
    end = int(np.asarray(outputs["end_pos"]).reshape(-1)[0])
    return {"answer": " ".join(context_tokens[start : end + 1])}
