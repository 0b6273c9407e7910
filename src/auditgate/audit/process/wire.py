"""The socket protocol between the gateway and its audit process, and the metrics carried back.

Every message is one frame: :data:`HEADER` ``(length, kind)`` then ``length`` bytes.

Gateway → audit process: :data:`HELLO` (pickled ``(settings, writer, engine)``, once, first),
:data:`CAPTURE` (a :class:`~auditgate.audit.raw.RawCapture` in MessagePack; :data:`PICKLED` when
MessagePack cannot hold it: a lone surrogate, an integer past 64 bits), :data:`FLUSH` ``[token]``,
:data:`STOP` ``[timeout_s]`` (then the end of the stream).

Audit process → gateway: :data:`READY` ``[]`` or :data:`FAILED` ``[message]`` (after HELLO),
:data:`ACK` ``[received, done]`` (captures read so far; captures every sink has stored or
counted as dropped — a lower bound), :data:`METRICS` (every sample of its registry, see
:class:`MetricsMirror`), :data:`FLUSHED` ``[token, ok]``, :data:`REPORT` ``{sink: undelivered}``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, Final

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

HEADER: Final = struct.Struct("<IB")
"""``(length, kind)`` before every message."""

HELLO: Final = 1
CAPTURE: Final = 2
PICKLED: Final = 3
FLUSH: Final = 4
STOP: Final = 5
READY: Final = 10
FAILED: Final = 11
ACK: Final = 12
METRICS: Final = 13
FLUSHED: Final = 14
REPORT: Final = 15

encoder: Final = msgspec.msgpack.Encoder()
decoder: Final = msgspec.msgpack.Decoder()


def frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), kind) + payload


def message(kind: int, value: Any) -> bytes:
    """One frame holding ``value`` in MessagePack."""
    return frame(kind, encoder.encode(value))


class Reader:
    """Splits received bytes into frames (a frame may arrive in pieces)."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> Iterator[tuple[int, memoryview]]:
        """The complete frames ``data`` ends, in order, as ``(kind, payload)``."""
        if self._pending:
            data = self._pending + data
        view = memoryview(data)
        used, size, header = 0, len(data), HEADER.size
        while size - used >= header:
            length, kind = HEADER.unpack_from(data, used)
            end = used + header + length
            if end > size:
                break
            yield kind, view[used + header : end]
            used = end
        self._pending = data[used:]


Sample = tuple[str, str, dict[str, str], float]
"""``(family, sample name, labels, value)``."""


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], Sample]:
    """Every counter, gauge and histogram sample of ``registry`` (``_created`` left out)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], Sample] = {}
    for family in registry.collect():
        if family.type not in ("counter", "gauge", "histogram"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = (sample.name, tuple(sorted(sample.labels.items())))
            out[key] = (family.name, sample.name, dict(sample.labels), float(sample.value))
    return out


class MetricsMirror:
    """The audit process's counters, histograms and gauges, added to the gateway's metrics of
    the same names, so that the gateway's ``/metrics`` reports them.

    The audit process sends all its samples now and then (:func:`samples`, cumulative values:
    a few dozen); :meth:`apply` adds the increase of each counter and histogram sample to the
    gateway's and sets each gauge.  A new audit process (a restart) starts from zero."""

    def __init__(self, registry: CollectorRegistry, metrics: object) -> None:
        self._families: dict[str, Counter | Gauge | Histogram] = {}
        for value in vars(metrics).values():
            if isinstance(value, Counter | Gauge | Histogram):
                for family in value.describe():
                    self._families[family.name] = value
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def restart(self) -> None:
        """A new audit process: its values start again from zero."""
        self._last.clear()

    def apply(self, changed: list[Sample]) -> None:
        """Take one message's samples (a whole registry's: every bucket of a histogram)."""
        last = self._last
        bucket_deltas: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[float, float]]] = {}
        for family_name, name, labels, value in changed:
            metric = self._families.get(family_name)
            if metric is None:
                continue
            key = (name, tuple(sorted(labels.items())))
            delta = value - last.get(key, 0.0)
            last[key] = value
            if isinstance(metric, Gauge):
                child = metric.labels(**labels) if labels else metric
                child.set(value)
            elif isinstance(metric, Counter):
                if delta > 0:
                    (metric.labels(**labels) if labels else metric).inc(delta)
            elif name.endswith("_sum"):
                if delta > 0:
                    metric.labels(**labels)._sum.inc(delta)
            elif name.endswith("_bucket"):
                le = labels.pop("le")
                group = bucket_deltas.setdefault((family_name, tuple(sorted(labels.items()))), [])
                group.append((float(le), delta))
        for (family_name, labels_key), deltas in bucket_deltas.items():
            histogram = self._families[family_name]
            assert isinstance(histogram, Histogram)
            buckets = histogram.labels(**dict(labels_key))._buckets
            # Buckets are cumulative in the exposition, one counter per bucket inside.
            below = 0.0
            for index, (_, cumulative) in enumerate(sorted(deltas)):
                if cumulative - below > 0:
                    buckets[index].inc(cumulative - below)
                below = cumulative
