"""A record as chat turns: roles, tool calls, reasoning apart, markdown that never runs."""

from __future__ import annotations

from auditgate.console.conversation import conversation, render_markdown


def test_markdown_is_rendered_and_html_is_text() -> None:
    """Markdown becomes HTML; raw HTML and javascript: links stay inert text."""
    html = render_markdown(
        "**bold** <script>alert(1)</script> <img src=x onerror=alert(2)> [a](javascript:alert(3))"
    )
    assert (
        "<strong>bold</strong>" in html,
        "<script" in html,
        "<img" in html,
        'href="javascript' in html,
        "&lt;script&gt;" in html,
    ) == (True, False, False, False, True)


def test_chat_turns_with_tool_calls_reasoning_and_tool_answers() -> None:
    """Request messages then the answer; a tool call's JSON arguments pretty-printed, reasoning
    kept apart from the content, a tool turn names the call it answers."""
    record = {
        "request": {
            "messages": [
                {"role": "system", "content": "terse"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}],
                },
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c1", "function": {"name": "f", "arguments": '{"x": 1}'}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ]
        },
        "response": {
            "choices": [
                {"message": {"role": "assistant", "content": "done", "reasoning_content": "hmm"}}
            ]
        },
    }
    turns = conversation(record)
    assert [
        (
            t.role,
            str(t.html).strip(),
            t.reasoning,
            [(c.id, c.name, c.arguments) for c in t.tool_calls],
            t.tool_call_id,
            t.answer,
        )
        for t in turns
    ] == [
        ("system", "<p>terse</p>", "", [], "", False),
        ("user", "<p>hi</p>\n<p><em>[image_url]</em></p>", "", [], "", False),
        ("assistant", "", "", [("c1", "f", '{\n  "x": 1\n}')], "", False),
        ("tool", "<p>42</p>", "", [], "c1", False),
        ("assistant", "<p>done</p>", "hmm", [], "", True),
    ]


def test_responses_items_and_records_without_bodies() -> None:
    """Responses API input and output items become turns; a usage_only record has none."""
    record = {
        "request": {"instructions": "be kind", "input": "hello"},
        "response": {
            "output": [
                {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "think"}]},
                {"type": "function_call", "call_id": "fc", "name": "g", "arguments": "{}"},
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "hey"}],
                },
            ]
        },
    }
    turns = conversation(record)
    assert (
        [(t.role, t.reasoning, [c.name for c in t.tool_calls], t.answer) for t in turns],
        conversation({"mode": "usage_only"}),
    ) == (
        [
            ("system", "", [], False),
            ("user", "", [], False),
            ("assistant", "think", [], True),
            ("assistant", "", ["g"], True),
            ("assistant", "", [], True),
        ],
        [],
    )
