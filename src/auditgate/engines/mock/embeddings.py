"""The mock's embeddings (``POST /v1/embeddings``): deterministic unit vectors, OpenAI's shape.

Each input's vector is a pure function of ``model`` and the input's text: uniform 16-bit draws
from a PRNG seeded with a BLAKE2b hash of both, normalised to length 1 (as OpenAI's are), so
equal inputs embed equally and different ones (almost surely) differently.  ``dimensions`` (default
:data:`DEFAULT_DIMENSIONS`, at most :data:`MAX_DIMENSIONS`) sets the length;
``encoding_format`` ``float`` (default) gives JSON numbers, ``base64`` the little-endian float32
bytes in base64 (what the official SDK asks for by default, then decodes).  ``input``: a
string, a list of strings, a list of token ids, or a list of token-id lists (at most
:data:`MAX_INPUTS`, none empty); usage counts the mock's tokens of every input.
"""

from __future__ import annotations

import array
import base64
import hashlib
import math
import operator
import random
import sys
from typing import Any, Final

from auditgate.engines.mock.text import SPACED, count_tokens
from auditgate.errors import InvalidRequestError

__all__ = ["DEFAULT_DIMENSIONS", "MAX_DIMENSIONS", "MAX_INPUTS", "embeddings", "vector"]

DEFAULT_DIMENSIONS: Final = 256
MAX_DIMENSIONS: Final = 3072
MAX_INPUTS: Final = 2048


def embeddings(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The ``list`` of ``embedding`` objects answering ``body``; 400 for what OpenAI refuses."""
    texts = _inputs(body.get("input"))
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise InvalidRequestError(
            f"Invalid value for 'encoding_format': {encoding!r}. Supported values are: "
            "'float' and 'base64'.",
            param="encoding_format",
            code="invalid_value",
        )
    dimensions = body.get("dimensions", DEFAULT_DIMENSIONS)
    if type(dimensions) is not int or not 1 <= dimensions <= MAX_DIMENSIONS:
        raise InvalidRequestError(
            f"Invalid 'dimensions': expected an integer between 1 and {MAX_DIMENSIONS}, got "
            f"{dimensions!r}.",
            param="dimensions",
            code="invalid_value",
        )
    data = []
    for index, text in enumerate(texts):
        values = vector(model, text, dimensions)
        encoded: list[float] | str = values if encoding == "float" else _base64(values)
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(count_tokens(text) for text in texts)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def vector(model: str, text: str, dimensions: int) -> list[float]:
    """The unit vector of ``text`` under ``model``, ``dimensions`` long."""
    digest = hashlib.blake2b(f"{model}\x00{text}".encode(), digest_size=16).digest()
    rng = random.Random(int.from_bytes(digest, "big"))
    # Random 16-bit integers drawn in one C call, then scaled: a quarter of the CPU of one
    # Python-level Gaussian draw per number (a largest request, 2048 inputs of 3072 numbers,
    # holds the event loop that much less).
    raw = array.array("h", rng.randbytes(2 * dimensions))
    scale = 1.0 / (math.sqrt(sum(map(operator.mul, raw, raw))) or 1.0)
    return [v * scale for v in raw]


def _base64(values: list[float]) -> str:
    packed = array.array("f", values)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def _inputs(value: Any) -> list[str]:
    """The texts to embed; 400 unless ``value`` is one of the shapes OpenAI takes."""
    texts: list[str] | None = None
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            texts = list(value)
        elif all(type(v) is int and v >= 0 for v in value):
            texts = [_detokenize(value)]
        elif all(isinstance(v, list) and all(type(t) is int and t >= 0 for t in v) for v in value):
            texts = [_detokenize(v) for v in value]
    if texts is None:
        raise InvalidRequestError(
            "Invalid 'input': expected a string, an array of strings, an array of tokens, or an "
            "array of token arrays.",
            param="input",
            code="invalid_value",
        )
    if len(texts) > MAX_INPUTS:
        raise InvalidRequestError(
            f"Invalid 'input': at most {MAX_INPUTS} inputs per request, got {len(texts)}.",
            param="input",
            code="invalid_value",
        )
    if any(not text for text in texts):
        raise InvalidRequestError(
            "Invalid 'input': an input must not be empty.", param="input", code="invalid_value"
        )
    return texts


def _detokenize(ids: list[int]) -> str:
    return "".join(SPACED[i % len(SPACED)] for i in ids)
