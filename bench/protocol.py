"""Per-request cost of the HTTP protocol: ``python -m bench.protocol [--against FILE]``.

The micro-bench behind the protocol's recorded costs: one ``BoundedHttpToolsProtocol`` on
uvloop, fed one whole request per ``data_received`` (as a client on a kept-alive connection
sends it), answered by a trivial ASGI app, its response written to a transport that discards
it.  Microseconds of this process's CPU per request (steadier than wall time on a shared
machine), of the fastest batch of ``--batch`` requests in ``--rounds`` rounds, for three
request shapes:

- ``get``: ``GET /health`` with a few headers (head only);
- ``post``: a ~200-byte chat body in the same read as its head;
- ``split``: the same POST with head and body in two reads (how the SDK's writes often arrive).

``--against FILE`` measures a protocol class from another file too (e.g. the previous
version: ``git show main:src/auditgate/server/protocol.py > /tmp/old_protocol.py``); the rows
run interleaved, so a busy machine slows them alike.  uvicorn's own ``HttpToolsProtocol`` is
the floor.

On a machine too busy for microseconds to mean much, count instructions instead: ``--one
ROW:SHAPE`` runs just that many requests of one row and shape, untimed, so that under
``valgrind --tool=callgrind`` the instructions of two runs (``Collected``) differ by the
instructions per request times the difference of their ``--requests`` (a count that is the
same whatever else runs on the machine)::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python -m bench.protocol --one this:post --requests 1200
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import time
from collections.abc import Callable
from typing import Any

import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from auditgate.server.protocol import BoundedHttpToolsProtocol, GatewayConfig

HEAD = (
    b"%s %s HTTP/1.1\r\nhost: 127.0.0.1:8000\r\naccept: application/json\r\n"
    b"user-agent: OpenAI/Python 1.0\r\nauthorization: Bearer sk-bench\r\n"
    b"content-type: application/json\r\n%s\r\n"
)
BODY = b'{"model":"mock","messages":[{"role":"user","content":"%s"}],"store":true}' % (b"x" * 120)
POST_HEAD = HEAD % (b"POST", b"/v1/chat/completions", b"content-length: %d\r\n" % len(BODY))
SHAPES: dict[str, list[bytes]] = {
    "get": [HEAD % (b"GET", b"/health", b"")],
    "post": [POST_HEAD + BODY],
    "split": [POST_HEAD, BODY],
}
RESPONSE = b'{"status":"ok"}'


async def app(scope: Any, receive: Any, send: Any) -> None:
    """Read the body, answer a small JSON document."""
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"15")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": RESPONSE})


class NullTransport(asyncio.Transport):
    """Accepts writes and drops them."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def write(self, data: Any) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def per_request_us(
    factory: Callable[..., Any], reads: list[bytes], requests: int, batch: int
) -> float:
    """Microseconds per request on one connection: the fastest of ``requests / batch`` batches
    (a batch that another process interrupted is slower, never faster)."""
    config = GatewayConfig(app, log_config=None)
    state = ServerState()
    protocol = factory(config, state, {}, asyncio.get_running_loop())
    transport = NullTransport()
    protocol.connection_made(transport)
    tasks = state.tasks
    best = float("inf")
    for _ in range(max(1, requests // batch)):
        started = time.process_time()
        for _ in range(batch):
            for read in reads:
                protocol.data_received(read)
            while tasks:
                await asyncio.gather(*tasks)
        best = min(best, time.process_time() - started)
    assert not transport.closed and transport.written, "the protocol refused the request"
    protocol.connection_lost(None)
    return best / batch * 1e6


def load(path: str) -> type[Any]:
    spec = importlib.util.spec_from_file_location("bench_protocol_against", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BoundedHttpToolsProtocol  # type: ignore[no-any-return]


async def main(args: argparse.Namespace) -> None:
    classes: dict[str, type[Any]] = {"uvicorn": HttpToolsProtocol, "this": BoundedHttpToolsProtocol}
    if args.against:
        classes["against"] = load(args.against)
    if args.one:
        name, shape = args.one.split(":")
        await per_request_us(classes[name], SHAPES[shape], args.requests, args.requests)
        return
    best = {(name, shape): float("inf") for name in classes for shape in SHAPES}
    for _ in range(args.rounds):
        for shape, reads in SHAPES.items():
            for name, cls in classes.items():
                us = await per_request_us(cls, reads, args.requests, args.batch)
                best[name, shape] = min(best[name, shape], us)
    print(f"{'protocol':<10}" + "".join(f"{shape:>10}" for shape in SHAPES) + "   (us/request)")
    for name in classes:
        print(f"{name:<10}" + "".join(f"{best[name, shape]:>10.2f}" for shape in SHAPES))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20000, help="requests per round and row")
    p.add_argument("--batch", type=int, default=100, help="requests timed together")
    p.add_argument("--rounds", type=int, default=7, help="rounds; the best is reported")
    p.add_argument("--against", help="a protocol.py whose BoundedHttpToolsProtocol to compare")
    p.add_argument("--one", metavar="ROW:SHAPE", help="run only these requests, untimed")
    a = p.parse_args()
    uvloop.run(main(a))
