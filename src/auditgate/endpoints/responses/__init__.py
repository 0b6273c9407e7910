"""OpenAI's Responses API (``POST /v1/responses`` and the stored responses), pure parts.

- :mod:`.protocol` / :mod:`.items`: parse and validate a request body.

Nothing here does I/O; the transports and the pipeline call these.
"""

from auditgate.endpoints.responses.items import Item, parse_items
from auditgate.endpoints.responses.protocol import ResponsesRequest, parse_body, validate_responses

__all__ = [
    "Item",
    "ResponsesRequest",
    "parse_body",
    "parse_items",
    "validate_responses",
]
