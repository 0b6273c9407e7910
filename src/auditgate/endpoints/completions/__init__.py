"""Legacy text completions (``POST /v1/completions``): validation, stream aggregation, pipeline.

- :mod:`.protocol`: parse and validate a request body;
- :mod:`.aggregate`: a stream of ``text_completion`` chunks -> the final ``text_completion``;
- :mod:`.pipeline`: the chat pipeline with the engine's text methods and this aggregator.

The HTTP route (:mod:`auditgate.server.legacy`) and the ASGI middleware call these.
"""

from auditgate.endpoints.completions.aggregate import TextCompletionAggregator
from auditgate.endpoints.completions.pipeline import ENDPOINT, ID_PREFIX, CompletionsPipeline
from auditgate.endpoints.completions.protocol import CompletionParams, validate_completion

__all__ = [
    "ENDPOINT",
    "ID_PREFIX",
    "CompletionParams",
    "CompletionsPipeline",
    "TextCompletionAggregator",
    "validate_completion",
]
