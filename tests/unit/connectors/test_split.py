from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.split import (
    BUCKETS,
    Price,
    RefusalDetector,
    answer_text,
    bucket,
    choose_arm,
    cost_usd,
    parse_price,
)
from connectors.sse import SSEAccumulator


def test_bucket_is_stable_across_processes() -> None:
    here = [bucket("chat-v7", f"user-{i}") for i in range(5)]
    code = "from connectors.split import bucket; print([bucket('chat-v7', f'user-{i}') for i in range(5)])"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
        cwd=Path(__file__).parents[3],
    )
    assert other.stdout.strip() == str(here)
    assert all(0 <= b < BUCKETS for b in here)


def test_split_share_matches_weight() -> None:
    users = [f"u{i}" for i in range(20_000)]
    for weight in (0.0, 1.0, 10.0, 50.0, 100.0):
        share = sum(choose_arm(weight, bucket("r", u)) == "canary" for u in users) / len(users)
        assert abs(share - weight / 100) < 0.01, (weight, share)


def test_rollouts_get_different_slices() -> None:
    users = [f"u{i}" for i in range(2000)]
    a = {u for u in users if choose_arm(10, bucket("a", u)) == "canary"}
    b = {u for u in users if choose_arm(10, bucket("b", u)) == "canary"}
    assert len(a & b) < 0.3 * len(a)


@given(st.text(min_size=1, max_size=20), st.floats(0, 100), st.floats(0, 100))
def test_raising_the_weight_never_moves_a_canary_user_back(user: str, w1: float, w2: float) -> None:
    lo, hi = sorted((w1, w2))
    slot = bucket("r", user)
    if choose_arm(lo, slot) == "canary":
        assert choose_arm(hi, slot) == "canary"


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't help with that request.",
        "I am sorry, I cannot assist with this.",
        "I can't help with creating malware.",
        "As an AI language model, I cannot provide that.",
        "i'm unable to help with that",
    ],
)
def test_refusals_are_detected(text: str) -> None:
    assert RefusalDetector().is_refusal(text)


@pytest.mark.parametrize(
    "text",
    [
        "Sure! Here is the summary you asked for.",
        "I'm sorry to hear your flight was delayed; here are your options.",
        "The function can't return None because it raises first.",
        "",
    ],
)
def test_ordinary_answers_are_not_refusals(text: str) -> None:
    assert not RefusalDetector().is_refusal(text)


def test_refusal_signals_beyond_text_and_custom_patterns() -> None:
    d = RefusalDetector()
    assert d.is_refusal("", finish_reason="content_filter")
    assert d.is_refusal("", refusal_field="I can't do that")
    custom = RefusalDetector([r"\bnope\b"])
    assert custom.is_refusal("Nope.") and not custom.is_refusal("I'm sorry, but I can't help with that.")
    assert not RefusalDetector([]).is_refusal("I can't help with that")


def test_answer_text_reads_chat_and_text_completions() -> None:
    chat = {"choices": [{"message": {"content": "hi", "refusal": None}, "finish_reason": "stop"}]}
    assert answer_text(chat) == ("hi", "stop", None)
    legacy = {"choices": [{"text": "a"}, {"text": "b"}]}
    assert answer_text(legacy)[0] == "ab"
    assert answer_text({"choices": "garbage"}) == ("", None, None)  # type: ignore[dict-item]


def test_cost_from_price_table() -> None:
    prices = {"m": Price(input_per_1k=0.5, output_per_1k=1.5)}
    assert cost_usd(prices, "m", 2000, 1000) == pytest.approx(2.5)
    assert cost_usd(prices, "m", None, 1000) == pytest.approx(1.5)
    assert cost_usd(prices, "unknown", 10, 10) is None
    assert parse_price("gpt-4o-mini=0.00015,0.0006") == ("gpt-4o-mini", Price(0.00015, 0.0006))
    with pytest.raises(ValueError):
        parse_price("gpt-4o-mini")


def test_sse_accumulator_reassembles_chunks_split_anywhere() -> None:
    stream = (
        b'data: {"model":"m1","choices":[{"delta":{"content":"I\'m sorry, "}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":"but I can\'t help"},"finish_reason":"stop"}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":9}}\n\n'
        b"data: [DONE]\n\n"
    )
    acc = SSEAccumulator()
    for i in range(0, len(stream), 7):
        acc.feed(stream[i : i + 7])
    resp = acc.as_response()
    assert resp["model"] == "m1" and resp["usage"] == {"prompt_tokens": 7, "completion_tokens": 9}
    text, finish, _ = answer_text(resp)
    assert text == "I'm sorry, but I can't help" and finish == "stop"
    no_usage = SSEAccumulator()
    no_usage.feed(
        b'data: {"choices":[{"delta":{"content":"a"}}]}\ndata: {"choices":[{"delta":{"content":"b"}}]}\n'
    )
    assert no_usage.as_response()["usage"] == {"completion_tokens": 2}
