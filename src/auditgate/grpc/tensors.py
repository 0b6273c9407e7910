"""KServe v2 tensors <-> an OpenAI chat body, for Triton-style LLM models.

A request carries the input tensor ``text_input`` (BYTES, one element: shape ``[1]`` or
``[1, 1]``), optionally ``max_tokens`` (an integer type) and ``stream`` (BOOL), and request
parameters.  :func:`parse_infer_request` turns it into the chat body the HTTP transport would
have received::

    {"model": <model_name>, "messages": [{"role": "user", "content": <text_input>}],
     "max_tokens": ..., <parameters in the order sent>..., "stream": ...}

Parameters are OpenAI chat fields with scalar values (``store``, ``temperature``, ``top_p``,
``seed``, ``max_tokens``, ``stop``, ``user``, ...), passed through like unknown HTTP body fields;
``metadata`` is a string holding a JSON object.  KServe/Triton control parameters
(``sequence_*``, ``priority``, ``timeout``, ``triton_*``) are not chat fields and are not copied.
Every problem raises :class:`~auditgate.errors.InvalidRequestError` with a message naming the
tensor or parameter; the servicer sends it as ``INVALID_ARGUMENT``.

Inputs may come as ``raw_input_contents`` (what ``tritonclient`` sends: little-endian values,
BYTES elements each prefixed by a 4-byte little-endian length) or as typed ``contents``.
Outputs are written as raw contents, as Triton does: ``text_output`` and ``finish_reason``, both
BYTES with shape ``[1]``.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any, Final

import msgspec
from tritonclient.grpc import service_pb2

from auditgate.errors import UNDECODABLE, InvalidRequestError

TEXT_INPUT: Final = "text_input"
OUTPUTS: Final = ("text_output", "finish_reason")
FINAL_FLAG: Final = "triton_final_response"
EMPTY_FINAL: Final = "triton_enable_empty_final_response"
_INTS: Final = {"INT32": "<i", "INT64": "<q", "UINT32": "<I", "UINT64": "<Q"}
_INT_CONTENTS: Final = {
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
}
_CONTROL: Final = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout"}
)
_TRANSPORT_OWNED: Final = frozenset({"model", "messages", "stream_options", "n"})
_ACCEPTS: Final = "text_input (BYTES), and optionally max_tokens (INT32/INT64) and stream (BOOL)"


@dataclasses.dataclass(slots=True, kw_only=True)
class InferCall:
    """One KServe inference request, translated."""

    body: dict[str, Any]
    """The OpenAI chat body the pipeline receives (and a ``full`` record keeps)."""
    stream: bool
    """The ``stream`` input (or parameter): answer with one response per chunk."""
    outputs: tuple[str, ...]
    """Outputs to return: those the request named, else all of :data:`OUTPUTS`."""
    empty_final: bool
    """``triton_enable_empty_final_response``: end a stream with an empty flagged response."""


def parse_infer_request(request: service_pb2.ModelInferRequest) -> InferCall:
    """Translate ``request``; raises :class:`InvalidRequestError` for a bad tensor or parameter."""
    if not request.model_name:
        raise _invalid("'model_name' is required.")
    values = _inputs(request)
    if TEXT_INPUT not in values:
        raise _invalid(f"Missing required input tensor '{TEXT_INPUT}' (BYTES).")
    text = values[TEXT_INPUT]
    assert isinstance(text, bytes)
    try:
        content = text.decode()
    except UnicodeDecodeError:
        raise _invalid(f"Input tensor '{TEXT_INPUT}' is not valid UTF-8.") from None
    body: dict[str, Any] = {
        "model": request.model_name,
        "messages": [{"role": "user", "content": content}],
    }
    if "max_tokens" in values:
        body["max_tokens"] = values["max_tokens"]
    stream = values.get("stream")
    empty_final = False
    for key, param in request.parameters.items():
        value = _param_value(param)
        if key == EMPTY_FINAL:
            empty_final = value is True
        elif key in _CONTROL or key.startswith("triton_"):
            continue  # scheduling controls of the protocol, not chat fields
        elif key in _TRANSPORT_OWNED:
            raise _invalid(f"Parameter '{key}' cannot be set over KServe gRPC.")
        elif key in values:
            raise _invalid(f"'{key}' is given both as an input tensor and as a parameter.")
        elif key == "stream":
            stream = _typed(key, value, bool)
        elif key == "metadata":
            body[key] = _metadata(value)
        else:
            body[key] = value
    if stream is not None:
        body["stream"] = stream
    return InferCall(
        body=body,
        stream=stream is True,
        outputs=_outputs(request),
        empty_final=empty_final,
    )


def _inputs(request: service_pb2.ModelInferRequest) -> dict[str, bytes | int | bool]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise _invalid(
            f"The request has {len(request.inputs)} input tensors but "
            f"{len(raw)} raw_input_contents; each input needs one."
        )
    values: dict[str, bytes | int | bool] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in values:
            raise _invalid(f"Input tensor '{name}' is given twice.")
        expected = _expected_types(name)
        if expected is None:
            raise _invalid(f"Unexpected input tensor '{name}': this model takes {_ACCEPTS}.")
        if tensor.datatype not in expected:
            raise _invalid(
                f"Input tensor '{name}' must be {' or '.join(expected)}, got '{tensor.datatype}'."
            )
        shape = list(tensor.shape)
        count = 1
        for dim in shape:
            count *= dim
        if count != 1 or any(dim < 0 for dim in shape):
            raise _invalid(
                f"Input tensor '{name}' must hold exactly one element (shape [1] or [1, 1]), "
                f"got shape {shape}: send one prompt per request."
            )
        if raw:
            values[name] = _decode_raw(name, tensor.datatype, raw[index])
        else:
            values[name] = _decode_contents(name, tensor.datatype, tensor.contents)
    return values


def _expected_types(name: str) -> tuple[str, ...] | None:
    if name == TEXT_INPUT:
        return ("BYTES",)
    if name == "max_tokens":
        return tuple(_INTS)
    if name == "stream":
        return ("BOOL",)
    return None


def _decode_raw(name: str, datatype: str, data: bytes) -> bytes | int | bool:
    if datatype == "BYTES":
        if len(data) < 4:
            raise _invalid(f"Input tensor '{name}' has malformed BYTES contents.")
        (size,) = struct.unpack_from("<I", data)
        if len(data) != 4 + size:
            raise _invalid(
                f"Input tensor '{name}' has malformed BYTES contents "
                f"(expected one length-prefixed element)."
            )
        return data[4:]
    if datatype == "BOOL":
        if len(data) != 1:
            raise _invalid(f"Input tensor '{name}' must hold one BOOL byte, got {len(data)}.")
        return data != b"\x00"
    fmt = _INTS[datatype]
    if len(data) != struct.calcsize(fmt):
        raise _invalid(f"Input tensor '{name}' has {len(data)} bytes, not one {datatype}.")
    value: int = struct.unpack(fmt, data)[0]
    return value


def _decode_contents(
    name: str, datatype: str, contents: service_pb2.InferTensorContents
) -> bytes | int | bool:
    field = (
        "bytes_contents"
        if datatype == "BYTES"
        else "bool_contents"
        if datatype == "BOOL"
        else _INT_CONTENTS[datatype]
    )
    items = list(getattr(contents, field))
    if len(items) != 1:
        raise _invalid(f"Input tensor '{name}' must hold one value in '{field}', got {len(items)}.")
    value: bytes | int | bool = items[0]
    return value


def _param_value(param: service_pb2.InferParameter) -> Any:
    which = param.WhichOneof("parameter_choice")
    return None if which is None else getattr(param, which)


def _typed(key: str, value: Any, kind: type) -> Any:
    if not isinstance(value, kind):
        raise _invalid(f"Parameter '{key}' must be a {kind.__name__} parameter.")
    return value


def _metadata(value: Any) -> Any:
    if not isinstance(value, str):
        raise _invalid("Parameter 'metadata' must be a string holding a JSON object.")
    try:
        decoded = msgspec.json.decode(value)  # rejects lone surrogates, unlike json.loads
    except UNDECODABLE:
        raise _invalid("Parameter 'metadata' is not valid JSON.") from None
    if not isinstance(decoded, dict):
        raise _invalid("Parameter 'metadata' must be a JSON object.")
    return decoded


def _outputs(request: service_pb2.ModelInferRequest) -> tuple[str, ...]:
    names = tuple(output.name for output in request.outputs)
    for name in names:
        if name not in OUTPUTS:
            raise _invalid(
                f"Unknown output '{name}': this model produces text_output and finish_reason."
            )
    return names or OUTPUTS


def infer_response(
    request: service_pb2.ModelInferRequest,
    call: InferCall,
    *,
    text: str,
    finish_reason: str,
    request_id: str,
    final: bool | None = None,
) -> service_pb2.ModelInferResponse:
    """A response carrying the requested outputs; ``final`` sets ``triton_final_response``."""
    response = service_pb2.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    values = {"text_output": text, "finish_reason": finish_reason}
    for name in call.outputs:
        response.outputs.add(name=name, datatype="BYTES", shape=[1])
        data = values[name].encode()
        response.raw_output_contents.append(struct.pack("<I", len(data)) + data)
    response.parameters["audit_request_id"].string_param = request_id
    if final is not None:
        response.parameters[FINAL_FLAG].bool_param = final
    return response


def empty_final_response(
    request: service_pb2.ModelInferRequest, request_id: str
) -> service_pb2.ModelInferResponse:
    """Triton's empty last response of a stream, flagged ``triton_final_response``."""
    response = service_pb2.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    response.parameters["audit_request_id"].string_param = request_id
    response.parameters[FINAL_FLAG].bool_param = True
    return response


def _invalid(message: str) -> InvalidRequestError:
    return InvalidRequestError(message, code="invalid_tensor")
