"""Stored conversations: the context ``previous_response_id`` brings, and ``input_items`` pages."""

from __future__ import annotations

from typing import Any

import pytest
from openai.pagination import SyncCursorPage
from openai.types.responses import ResponseItem

from auditgate.endpoints.responses import (
    context_items,
    input_items,
    page,
    to_response,
    validate_responses,
)
from auditgate.errors import InvalidRequestError
from tests.endpoints.responses.chat import Call, Output, completion
from tests.endpoints.responses.sdk import item_model


def turn(
    body: dict[str, Any], output: Output, request_id: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A stored turn: ``body`` and the response the engine's ``output`` gave it."""
    response = to_response(
        completion(output),
        validate_responses(body),
        request_id=request_id,
        created_at=1,
        completed_at=2,
    )
    return body, response


FIRST = turn(
    {
        "model": "m",
        "instructions": "Rules.",
        "input": "Weather?",
        "tools": [{"type": "function", "name": "w"}],
    },
    Output(calls=[Call("call_1", "w", ["{}"])], finish_reason="tool_calls"),
    "r1",
)
SECOND = turn(
    {
        "model": "m",
        "previous_response_id": "resp_r1",
        "input": [
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {
                "role": "user",
                "content": [{"type": "input_image", "image_url": "https://x/a.png"}],
                "id": "msg_mine",
            },
        ],
    },
    Output(reasoning=["r"], content=["Sunny."]),
    "r2",
)
THIRD = turn(
    {
        "model": "m",
        "previous_response_id": "resp_r2",
        "input": [
            {"role": "assistant", "content": "I said sunny."},
            {"role": "system", "content": "Be kind."},
        ],
    },
    Output(content=["Yes."]),
    "r3",
)
USER_WEATHER = {
    "id": "msg_r1_in0",
    "type": "message",
    "role": "user",
    "content": [{"type": "input_text", "text": "Weather?"}],
    "status": "completed",
}
CALL_OUTPUT = {
    "id": "fco_r2_in0",
    "type": "function_call_output",
    "call_id": "call_1",
    "output": "sunny",
    "status": "completed",
}
USER_IMAGE = {
    "id": "msg_mine",
    "type": "message",
    "role": "user",
    "content": [
        {"type": "input_image", "detail": "auto", "file_id": None, "image_url": "https://x/a.png"}
    ],
    "status": "completed",
}
ASSISTANT_SAID = {
    "id": "msg_r3_in0",
    "type": "message",
    "status": "completed",
    "content": [{"type": "output_text", "annotations": [], "text": "I said sunny."}],
    "role": "assistant",
}
SYSTEM_KIND = {
    "id": "msg_r3_in1",
    "type": "message",
    "role": "system",
    "content": [{"type": "input_text", "text": "Be kind."}],
    "status": "completed",
}


def test_context_is_every_turns_input_then_output() -> None:
    """The context of a continuation is each turn's input items then its output items, in order
    (instructions are not items, so they do not carry over)."""
    assert context_items([FIRST, SECOND]) == [
        USER_WEATHER,
        *FIRST[1]["output"],
        CALL_OUTPUT,
        USER_IMAGE,
        *SECOND[1]["output"],
    ]


def test_input_items_list_the_whole_context() -> None:
    """A response's input items are the earlier turns' items and then its own input, each with
    a stable id and in the SDK's ``ResponseItem`` shape."""
    items = input_items([FIRST, SECOND, THIRD])
    assert items == [*context_items([FIRST, SECOND]), ASSISTANT_SAID, SYSTEM_KIND]
    assert [item["id"] for item in items] == [
        "msg_r1_in0",
        "fc_r1_0",
        "fco_r2_in0",
        "msg_mine",
        "rs_r2_0",
        "msg_r2_1",
        "msg_r3_in0",
        "msg_r3_in1",
    ]
    for item in items:
        item_model(item)
    assert input_items([]) == []


def test_pages_like_openai() -> None:
    """Pages go newest first by default, ``asc`` on request, continue ``after`` an id, and say
    whether more remain; the SDK's cursor page reads them."""
    items = input_items([FIRST, SECOND, THIRD])
    ids = [item["id"] for item in items]
    first = page(items, limit=3)
    assert first == {
        "object": "list",
        "data": items[::-1][:3],
        "first_id": ids[-1],
        "last_id": ids[-3],
        "has_more": True,
    }
    rest = page(items, after=first["last_id"], limit=100)
    assert ([i["id"] for i in rest["data"]], rest["has_more"]) == (ids[::-1][3:], False)
    ascending = page(items, order="asc", after=ids[1], limit=2)
    assert (ascending["data"], ascending["has_more"]) == (items[2:4], True)
    before = page(items, order="asc", before=ids[3], limit=2)
    assert (before["data"], before["has_more"]) == (items[0:2], True)
    between = page(items, order="asc", after=ids[0], before=ids[3], limit=5)
    assert (between["data"], between["has_more"]) == (items[1:3], False)
    assert page([], limit=5) == {
        "object": "list",
        "data": [],
        "first_id": "",
        "last_id": "",
        "has_more": False,
    }
    parsed = SyncCursorPage[ResponseItem].model_validate(first)
    assert [item.id for item in parsed.data] == ids[::-1][:3]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"after": "msg_nope"},
            {
                "message": "Invalid 'after': no object with id 'msg_nope' in this list.",
                "param": "after",
            },
        ),
        (
            {"before": "msg_nope"},
            {
                "message": "Invalid 'before': no object with id 'msg_nope' in this list.",
                "param": "before",
            },
        ),
        (
            {"limit": 101},
            {
                "message": "Invalid 'limit': expected an integer between 1 and 100, got 101.",
                "param": "limit",
            },
        ),
    ],
)
def test_bad_page_parameters(kwargs: dict[str, Any], expected: dict[str, Any]) -> None:
    """An ``after`` that names no item, or a limit out of 1-100, is a 400 naming it."""
    with pytest.raises(InvalidRequestError) as caught:
        page(input_items([FIRST]), **kwargs)
    assert caught.value.to_dict()["error"] == {
        **expected,
        "type": "invalid_request_error",
        "code": "invalid_value",
    }


def test_items_of_other_types_are_listed_as_they_came() -> None:
    """An item type the gateway does not take itself (stored from a passthrough upstream) is
    listed as it came, with an id when it had none."""
    body = {
        "model": "m",
        "input": [{"type": "web_search_call", "status": "completed", "action": {"type": "search"}}],
    }
    response = {"id": "resp_r7", "output": []}
    assert input_items([(body, response)]) == [
        {
            "type": "web_search_call",
            "status": "completed",
            "action": {"type": "search"},
            "id": "item_r7_in0",
        }
    ]
