"""NATS JetStream sink: every record published with an acknowledgement, duplicates dropped.

Wire format, shared with ``auditgate consume``: one message per record on ``subject``; the payload
is exactly :attr:`Envelope.json` — the bytes of the line the ``jsonl`` sink writes, without its
trailing newline (a message already has a boundary); header ``Nats-Msg-Id: <request_id>``, so the
server drops a re-published record within the stream's duplicate window (the bus retries failed
batches; the targets of ``auditgate consume`` are idempotent on ``request_id`` beyond the window).

Startup and outages (the README states the same):

- A malformed URL, subject or stream name is a :class:`ConfigError` from :meth:`NatsSink.open`:
  the gateway does not start.
- A stream that exists but does not capture ``subject`` (or a subject already captured by another
  stream) is a :class:`ConfigError` from ``open`` when the server is reachable.  If it is only
  discovered later (the server was down at start), every write fails with that message, counted and
  logged, until it is fixed.
- A server that cannot be reached at start (down, or its name does not resolve yet) is *not* a
  startup error: the sink logs a warning and starts disconnected; each write first tries to connect
  (bounded by ``connect_timeout_s``) and raises when it cannot, so the bus counts the error and
  retries with backoff.  Once connected, the client reconnects by itself, forever.
- During an outage a write never hangs: it raises at once when the client knows it is disconnected,
  and after ``ack_timeout_s`` when acknowledgements do not arrive.

A stream created by this sink captures exactly ``subject``, uses file storage, keeps records without
limits (``auditgate consume`` moves them to a database; set limits with ``nats stream edit``) and
has a duplicate window of ``duplicate_window_s``.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from auditgate.audit.record import Envelope
from auditgate.audit.sink import BatchPolicy
from auditgate.errors import ConfigError, SinkError
from auditgate.logs import RateLimitedLog

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext
    from nats.js.manager import JetStreamManager

log = logging.getLogger("auditgate.sinks.nats")

SCHEMES: Final = ("nats", "tls", "ws", "wss")
MSG_ID_HEADER: Final = "Nats-Msg-Id"


class NatsSink:
    """Publishes batches to a JetStream stream; ``write`` returns once every record is acked."""

    name = "nats"

    def __init__(
        self,
        url: str,
        subject: str,
        stream: str,
        *,
        max_records: int = 512,
        max_inflight: int = 256,
        ack_timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
        duplicate_window_s: float = 120.0,
    ) -> None:
        self.url = url
        self.subject = subject
        self.stream = stream
        self.batching = BatchPolicy(max_records=max_records)
        self.max_inflight = max_inflight
        """Most publishes awaiting their acknowledgement at once."""
        self.ack_timeout_s = ack_timeout_s
        """Longest one batch write waits for its acknowledgements."""
        self.connect_timeout_s = connect_timeout_s
        """Longest one attempt to connect (at open, or before a write while never connected)."""
        self.duplicate_window_s = duplicate_window_s
        """Duplicate window of a stream this sink creates."""
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._stream_ready = False
        self._closing = False
        self._log = RateLimitedLog()

    def __repr__(self) -> str:
        return (
            f"NatsSink(url={redact_url(self.url)!r}, subject={self.subject!r}, "
            f"stream={self.stream!r})"
        )

    async def open(self) -> None:
        """Validate the settings, then connect and check the stream if the server is reachable."""
        validate_url(self.url)
        validate_subject(self.subject)
        validate_stream_name(self.stream)
        try:
            await self._ready()
        except ConfigError:
            await self.close()
            raise
        except SinkError as exc:
            log.warning(
                "audit sink nats: %s is unreachable at start (%s); starting disconnected, "
                "writes will retry",
                redact_url(self.url),
                exc,
            )

    async def write(self, batch: Sequence[Envelope]) -> None:
        """Publish every record and wait for every acknowledgement, or raise."""
        import nats.errors
        import nats.js.errors

        js = await self._ready()
        futures: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout(self.ack_timeout_s):
                for envelope in batch:
                    futures.append(
                        await js.publish_async(
                            self.subject,
                            envelope.json,
                            stream=self.stream,
                            headers={MSG_ID_HEADER: envelope.request_id},
                        )
                    )
                await asyncio.gather(*futures)
        except TimeoutError:
            raise SinkError(
                f"no acknowledgement for {len(batch)} record(s) within {self.ack_timeout_s}s"
            ) from None
        except nats.js.errors.NoStreamResponseError:
            # No stream leader answered: one is being elected (a cluster node was lost), or the
            # stream vanished (deleted, a server that lost its store). Check it again, which
            # creates it only if it is missing.
            self._stream_ready = False
            raise SinkError(
                f"no stream answers on {self.subject!r} (leader election, or the stream is "
                "gone); will check the stream again"
            ) from None
        except (nats.errors.Error, OSError) as exc:
            raise SinkError(f"publish failed: {_describe(exc)}") from exc
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()

    async def close(self) -> None:
        """Close the connection (every write has already been acknowledged)."""
        self._closing = True
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            await nc.close()

    async def _ready(self) -> JetStreamContext:
        """The JetStream context, connected and with the stream in place; SinkError otherwise."""
        if self._nc is not None and self._nc.is_closed:
            # Closed for good (not reconnecting), e.g. after an authorization error: start over.
            self._nc = self._js = None
        if self._nc is None or self._js is None:
            self._nc = await self._connect()
            self._js = self._nc.jetstream(
                timeout=self.ack_timeout_s, publish_async_max_pending=self.max_inflight
            )
        js = self._js
        if not self._nc.is_connected:
            raise SinkError(f"not connected to {redact_url(self.url)} (reconnecting)")
        if not self._stream_ready:
            import nats.errors

            try:
                await ensure_stream(
                    js, self.stream, self.subject, duplicate_window_s=self.duplicate_window_s
                )
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                raise SinkError(f"cannot check stream {self.stream!r}: {_describe(exc)}") from exc
            self._stream_ready = True
        return js

    async def _connect(self) -> Client:
        import nats

        try:
            # With max_reconnect_attempts=-1 nats-py retries the first connection forever, too:
            # the timeout is what makes an unreachable server an error here.
            return await asyncio.wait_for(
                nats.connect(
                    servers(self.url),
                    name="auditgate-sink",
                    connect_timeout=self.connect_timeout_s,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    ping_interval=10,
                    max_outstanding_pings=3,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                ),
                self.connect_timeout_s,
            )
        except TimeoutError:
            raise SinkError(
                f"cannot connect to {redact_url(self.url)} within {self.connect_timeout_s}s"
            ) from None

    async def _on_error(self, exc: Exception) -> None:
        self._log.warning("nats:error", "audit sink nats: %s", _describe(exc))

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        log.warning("audit sink nats: disconnected from %s; reconnecting", redact_url(self.url))

    async def _on_reconnected(self) -> None:
        log.warning("audit sink nats: reconnected to %s", redact_url(self.url))


async def ensure_stream(
    js: JetStreamManager, stream: str, subject: str, *, duplicate_window_s: float
) -> None:
    """Create ``stream`` capturing ``subject`` if missing; ConfigError if it does not capture it.

    Shared by the sink and ``auditgate consume``, so either may start first.
    """
    import nats.js.api
    import nats.js.errors

    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        config = nats.js.api.StreamConfig(
            name=stream,
            subjects=[subject],
            storage=nats.js.api.StorageType.FILE,
            duplicate_window=duplicate_window_s,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            # e.g. "subjects overlap with an existing stream": another stream owns the subject.
            raise ConfigError(
                f"cannot create NATS stream {stream!r} for subject {subject!r}: {exc.description}"
            ) from None
        log.info("created NATS stream %s capturing %s", stream, subject)
        return
    subjects = list(info.config.subjects or [])
    if not any(subject_matches(pattern, subject) for pattern in subjects):
        raise ConfigError(
            f"NATS stream {stream!r} exists but does not capture subject {subject!r} "
            f"(its subjects: {', '.join(subjects) or 'none'}); use another stream name or subject"
        )


def subject_matches(pattern: str, subject: str) -> bool:
    """True if the subject ``pattern`` (``*`` one token, ``>`` the rest) matches ``subject``."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def servers(url: str) -> list[str]:
    """The servers of a comma list URL, as ``nats.connect`` takes several: nats-py parses a
    string as one server, so ``nats://a:4222,nats://b:4222`` must be split (a cluster's nodes;
    the client also learns the others from the one it reaches)."""
    return [part.strip() for part in url.split(",") if part.strip()]


def validate_url(url: str) -> None:
    """ConfigError unless ``url`` is a comma list of ``nats|tls|ws|wss://host[:port]``."""
    parts = [part.strip() for part in url.split(",")]
    if not url.strip() or not all(parts):
        raise ConfigError(f"NATS URL {redact_url(url)!r}: expected nats://host[:port]")
    for part in parts:
        parsed = urllib.parse.urlsplit(part)
        try:
            port = parsed.port
        except ValueError:
            port = -1
        if parsed.scheme not in SCHEMES or not parsed.hostname or port == -1:
            raise ConfigError(
                f"NATS URL {redact_url(part)!r}: expected {'|'.join(SCHEMES)}://host[:port]"
            )


def validate_subject(subject: str) -> None:
    """ConfigError unless ``subject`` is a literal subject one can publish on."""
    tokens = subject.split(".")
    if not subject or any(not t or t in ("*", ">") or any(c.isspace() for c in t) for t in tokens):
        raise ConfigError(f"NATS subject {subject!r}: expected dot-separated tokens, no wildcards")


def validate_stream_name(stream: str) -> None:
    """ConfigError unless ``stream`` is a valid JetStream stream name."""
    if not stream or any(c in ".*>/\\" or c.isspace() for c in stream):
        raise ConfigError(f"NATS stream name {stream!r}: no '.', '*', '>', slashes or spaces")


def redact_url(url: str) -> str:
    """``url`` with any password or token replaced, for logs and errors."""
    out = []
    for part in url.split(","):
        parsed = urllib.parse.urlsplit(part.strip())
        if parsed.username is None and parsed.password is None:
            out.append(part.strip())
            continue
        host = parsed.hostname or ""
        netloc = f"<redacted>@{host}" + (f":{parsed.port}" if _has_port(parsed) else "")
        out.append(urllib.parse.urlunsplit(parsed._replace(netloc=netloc)))
    return ",".join(out)


def _has_port(parsed: urllib.parse.SplitResult) -> bool:
    try:
        return parsed.port is not None
    except ValueError:
        return False


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
