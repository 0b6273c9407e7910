"""A trivial, fast OpenAI-compatible upstream for benchmarks: never the bottleneck.

``python bench/upstream.py --port P [--model NAME ...]`` serves, on 127.0.0.1 only:

- ``POST /v1/chat/completions``: a fixed ``chat.completion`` (16 completion tokens, ``usage``), or
  with ``"stream": true`` an SSE stream of 16 content chunks (the first carries the role, the last
  ``finish_reason``), a usage chunk when ``stream_options.include_usage`` is true, then
  ``data: [DONE]``; every SSE frame is its own HTTP chunk, all written at once;
- ``POST /v1/completions`` (legacy): the same answer as a ``text_completion`` (its chunks carry
  ``text`` where chat's carry a delta);
- ``GET /v1/models`` and ``GET /health``.

Why raw asyncio + httptools instead of a web framework: every response is precomputed bytes, so
one request costs a parse and a ``write`` — tens of microseconds — and the upstream's CPU never
limits what the gateway in front of it can do.  Any request body that is not JSON gets a 400.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any, Final, cast

import httptools
import msgspec

TOKENS: Final = 16
PROMPT_TOKENS: Final = 10
CREATED: Final = 1_700_000_000
_decode = msgspec.json.Decoder(dict[str, Any]).decode


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _response(status: str, content_type: bytes, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: ".encode()
        + content_type
        + f"\r\ncontent-length: {len(body)}\r\n\r\n".encode()
    )
    return head + body


def completion_body(model: str, legacy: bool = False) -> bytes:
    """The non-streamed ``chat.completion`` (``legacy``: ``text_completion``) for ``model``."""
    if legacy:
        text = "".join(_words())
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": "length"}
        return _json(
            {
                "id": "cmpl-upstream",
                "object": "text_completion",
                "created": CREATED,
                "model": model,
                "choices": [choice],
                "usage": _usage(),
            }
        )
    return _json(
        {
            "id": "chatcmpl-upstream",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(_words())},
                    "finish_reason": "length",
                }
            ],
            "usage": _usage(),
        }
    )


def stream_frames(model: str, include_usage: bool, legacy: bool = False) -> list[bytes]:
    """The SSE frames (``data: ...\\n\\n``) of one streamed completion for ``model``."""
    if legacy:
        return _legacy_frames(model, include_usage)
    frames = []
    for i, word in enumerate(_words()):
        delta: dict[str, str] = (
            {"role": "assistant", "content": word} if i == 0 else {"content": word}
        )
        chunk = {
            "id": "chatcmpl-upstream",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "delta": delta,
                    "finish_reason": "length" if i == TOKENS - 1 else None,
                }
            ],
        }
        frames.append(b"data: " + _json(chunk) + b"\n\n")
    if include_usage:
        usage = {
            "id": "chatcmpl-upstream",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [],
            "usage": _usage(),
        }
        frames.append(b"data: " + _json(usage) + b"\n\n")
    frames.append(b"data: [DONE]\n\n")
    return frames


def _legacy_frames(model: str, include_usage: bool) -> list[bytes]:
    """The SSE frames of one streamed legacy ``text_completion``."""
    head = {"id": "cmpl-upstream", "object": "text_completion", "created": CREATED, "model": model}
    frames = []
    for i, word in enumerate(_words()):
        finish = "length" if i == TOKENS - 1 else None
        choice = {"text": word, "index": 0, "logprobs": None, "finish_reason": finish}
        frames.append(b"data: " + _json({**head, "choices": [choice]}) + b"\n\n")
    if include_usage:
        frames.append(b"data: " + _json({**head, "choices": [], "usage": _usage()}) + b"\n\n")
    frames.append(b"data: [DONE]\n\n")
    return frames


def stream_response(model: str, include_usage: bool, legacy: bool = False) -> bytes:
    """The whole HTTP response of a stream: headers, one chunk per frame, the last chunk."""
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    frames = stream_frames(model, include_usage, legacy)
    chunks = [b"%x\r\n%s\r\n" % (len(f), f) for f in frames]
    return head + b"".join(chunks) + b"0\r\n\r\n"


def _words() -> list[str]:
    return [f"w{i} " for i in range(TOKENS)]


def _usage() -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": TOKENS,
        "total_tokens": PROMPT_TOKENS + TOKENS,
    }


class Responses:
    """Precomputed response bytes, built once per (model, stream, include_usage, legacy)."""

    def __init__(self, models: list[str]) -> None:
        self.models = models
        self._cache: dict[tuple[str, bool, bool, bool], bytes] = {}
        data = [
            {"id": m, "object": "model", "created": CREATED, "owned_by": "bench"} for m in models
        ]
        self.model_list = _response(
            "200 OK", b"application/json", _json({"object": "list", "data": data})
        )
        self.health = _response("200 OK", b"application/json", b'{"status":"ok"}')
        self.not_found = _response("404 Not Found", b"application/json", b'{"error":"not found"}')
        self.bad_request = _response(
            "400 Bad Request", b"application/json", b'{"error":{"message":"invalid JSON"}}'
        )

    def chat(self, body: bytes, *, legacy: bool = False) -> bytes:
        """The answer to a chat request (``legacy``: to a ``/v1/completions`` request)."""
        try:
            request = _decode(body)
        except msgspec.DecodeError:
            return self.bad_request
        model = str(request.get("model") or self.models[0])
        stream = request.get("stream") is True
        options = request.get("stream_options")
        usage = stream and isinstance(options, dict) and options.get("include_usage") is True
        key = (model, stream, usage, legacy)
        response = self._cache.get(key)
        if response is None:
            if stream:
                response = stream_response(model, usage, legacy)
            else:
                body = completion_body(model, legacy)
                response = _response("200 OK", b"application/json", body)
            self._cache[key] = response
        return response


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: parses requests with httptools, answers from :class:`Responses`."""

    def __init__(self, responses: Responses) -> None:
        self.responses = responses
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but implement it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        transport = self.transport
        assert transport is not None
        path = self.url.split(b"?", 1)[0].rstrip(b"/")
        method = self.parser.get_method()
        r = self.responses
        if method == b"POST" and path.endswith(b"/chat/completions"):
            response = r.chat(b"".join(self.body))
        elif method == b"POST" and path.endswith(b"/completions"):
            response = r.chat(b"".join(self.body), legacy=True)
        elif method == b"GET" and path.endswith(b"/models"):
            response = r.model_list
        elif method == b"GET" and path == b"/health":
            response = r.health
        else:
            response = r.not_found
        transport.write(response)
        if not self.parser.should_keep_alive():
            transport.close()


async def start_server(port: int, models: list[str]) -> asyncio.Server:
    """A listening upstream on 127.0.0.1:``port`` (0: any free port)."""
    loop = asyncio.get_running_loop()
    responses = Responses(models)
    return await loop.create_server(
        lambda: UpstreamProtocol(responses), "127.0.0.1", port, backlog=1024
    )


async def serve(port: int, models: list[str]) -> None:
    """Serve on 127.0.0.1:``port`` until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    server = await start_server(port, models)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", action="append", dest="models", help="model id (repeatable)")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.port, args.models or ["mock"]))
    else:
        uvloop.run(serve(args.port, args.models or ["mock"]))


if __name__ == "__main__":
    main()
