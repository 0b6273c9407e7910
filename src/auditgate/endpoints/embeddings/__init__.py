"""Embeddings (``POST /v1/embeddings``): validation, the record's summary, the pipeline.

- :mod:`.protocol`: parse and validate a request body;
- :mod:`.summary`: the response as the record keeps it (no vectors);
- :mod:`.pipeline`: the engine's ``embed`` with audit capture.

The HTTP route (:mod:`auditgate.server.legacy`) calls these.
"""

from auditgate.endpoints.embeddings.pipeline import ENDPOINT, EmbeddingsPipeline
from auditgate.endpoints.embeddings.protocol import EmbeddingParams, validate_embeddings
from auditgate.endpoints.embeddings.summary import summarize

__all__ = [
    "ENDPOINT",
    "EmbeddingParams",
    "EmbeddingsPipeline",
    "summarize",
    "validate_embeddings",
]
