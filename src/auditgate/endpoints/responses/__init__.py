"""OpenAI's Responses API (``POST /v1/responses`` and the stored responses).

The pure parts:

- :mod:`.protocol` / :mod:`.items`: parse and validate a request body;
- :mod:`.translate`: a request (after its stored conversation) -> a chat completion request,
  a ``chat.completion`` -> the ``response`` object;
- :mod:`.events` / :mod:`.sse`: chat completion chunks -> the typed stream events -> SSE bytes;
- :mod:`.aggregate`: an upstream's own Responses stream -> the final ``response`` (passthrough);
- :mod:`.history`: stored turns -> the conversation to continue and the ``input_items`` list;
- :mod:`.objects`: the ``response`` object, its ids and usage;
- :mod:`.dataset`: a stored conversation as a chat example (``auditgate export``).

And what runs them, for every transport (the HTTP routes are
:mod:`auditgate.server.responses`): :mod:`.service` (the pipeline: the stored conversation, the
capture, the engine, the stream), :mod:`.stored` (stored responses: lookups, conversations,
deletes) and :mod:`.passthrough` (an upstream's own ``/v1/responses``).
"""

from auditgate.endpoints.responses.aggregate import ResponsesStreamAggregator
from auditgate.endpoints.responses.events import Event, ResponseStreamWriter
from auditgate.endpoints.responses.history import context_items, input_items, page
from auditgate.endpoints.responses.items import Item, parse_items
from auditgate.endpoints.responses.objects import response_id
from auditgate.endpoints.responses.protocol import ResponsesRequest, parse_body, validate_responses
from auditgate.endpoints.responses.sse import encode_events
from auditgate.endpoints.responses.translate import to_chat_body, to_response

__all__ = [
    "Event",
    "Item",
    "ResponseStreamWriter",
    "ResponsesRequest",
    "ResponsesStreamAggregator",
    "context_items",
    "encode_events",
    "input_items",
    "page",
    "parse_body",
    "parse_items",
    "response_id",
    "to_chat_body",
    "to_response",
    "validate_responses",
]
