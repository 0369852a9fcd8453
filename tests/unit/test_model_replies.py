"""A provider's reply body is read defensively: whatever it sends, the answer is absent or the text, never a crash."""

from __future__ import annotations

import json

import pytest

from server.backends.openai_compatible import Usage, _read_reply

GOOD = {
    "choices": [{"message": {"content": '{"high_risk": true}'}}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3},
}


@pytest.mark.parametrize(
    ("body", "content", "usage"),
    [
        (json.dumps(GOOD).encode(), '{"high_risk": true}', Usage(7, 3)),
        (b"<html>502 Bad Gateway</html>", None, Usage()),
        (b"[]", None, Usage()),
        (json.dumps({"choices": []}).encode(), None, Usage()),
        (json.dumps({"choices": [{"message": {"content": None}}]}).encode(), None, Usage()),
        (
            json.dumps({"choices": [{"message": {"content": 5}}], "usage": {"prompt_tokens": 2}}).encode(),
            None,
            Usage(2, 0),
        ),
        (json.dumps({**GOOD, "usage": {"prompt_tokens": "many"}}).encode(), '{"high_risk": true}', Usage()),
        (json.dumps({**GOOD, "usage": [1, 2]}).encode(), '{"high_risk": true}', Usage()),
    ],
    ids=[
        "well-formed",
        "not-json",
        "not-an-object",
        "no-choices",
        "null-content",
        "content-not-text",
        "bad-usage",
        "usage-not-object",
    ],
)
def test_a_reply_body_is_read_or_reported_absent(body: bytes, content: str | None, usage: Usage) -> None:
    assert _read_reply(body) == (content, usage)
