"""Traffic split and answer inspection: pure functions the router calls per request."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

BUCKETS = 10_000

DEFAULT_REFUSAL_PATTERNS: tuple[str, ...] = (
    r"\bI(?:'m| am) (?:sorry|afraid),? (?:but )?I (?:can(?:'|no)t|cannot|won'?t|am (?:not able|unable))",
    r"\bI (?:can(?:'|no)t|cannot|won'?t) (?:help|assist|comply|provide|do that)",
    r"\bI(?:'m| am) (?:not able|unable) to (?:help|assist|comply|provide)",
    r"\bas an AI(?: language model)?,? I (?:can(?:'|no)t|cannot|don'?t)",
)


def bucket(rollout_id: str, key: str) -> int:
    """Stable across processes and restarts (unlike ``hash()``); salted with the rollout so each
    rollout's canary slice is a different set of users."""
    h = hashlib.blake2b(f"{rollout_id}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") % BUCKETS


def choose_arm(weight: float, slot: int) -> str:
    """Canary when the bucket falls under weight% of the buckets; raising the weight only adds users
    to the canary, so a sticky user never flips back and forth during a promotion."""
    return "canary" if slot < round(weight * BUCKETS / 100) else "baseline"


class RefusalDetector:
    def __init__(self, patterns: Iterable[str] = DEFAULT_REFUSAL_PATTERNS) -> None:
        self.patterns = tuple(patterns)
        self._re = (
            re.compile("|".join(f"(?:{p})" for p in self.patterns), re.IGNORECASE) if self.patterns else None
        )

    def is_refusal(self, text: str, *, finish_reason: str | None = None, refusal_field: Any = None) -> bool:
        if refusal_field:  # OpenAI structured outputs put an explicit refusal here
            return True
        if finish_reason == "content_filter":
            return True
        return bool(self._re is not None and text and self._re.search(text))


def answer_text(body: Mapping[str, Any]) -> tuple[str, str | None, Any]:
    """(text, finish_reason, refusal field) of a chat or text completion response."""
    texts: list[str] = []
    finish: str | None = None
    refusal: Any = None
    for choice in body.get("choices") or ():
        if not isinstance(choice, Mapping):
            continue
        finish = finish or choice.get("finish_reason")
        msg = choice.get("message") or choice.get("delta")
        if isinstance(msg, Mapping):
            content = msg.get("content")
            refusal = refusal or msg.get("refusal")
            if isinstance(content, str):
                texts.append(content)
        elif isinstance(choice.get("text"), str):
            texts.append(choice["text"])
    return "".join(texts), finish, refusal


@dataclass(frozen=True)
class Price:
    input_per_1k: float
    output_per_1k: float


def cost_usd(
    prices: Mapping[str, Price], model: str | None, input_tokens: int | None, output_tokens: int
) -> float | None:
    """None for an unpriced model: the worker then prices from tokens with the policy's table."""
    p = prices.get(model or "")
    if p is None:
        return None
    return (input_tokens or 0) / 1000 * p.input_per_1k + output_tokens / 1000 * p.output_per_1k


def parse_price(spec: str) -> tuple[str, Price]:
    """``MODEL=IN,OUT`` in USD per 1k tokens, e.g. ``gpt-4o-mini=0.00015,0.0006``."""
    model, _, rest = spec.partition("=")
    a, _, b = rest.partition(",")
    if not model or not a or not b:
        raise ValueError(f"price must look like MODEL=IN_PER_1K,OUT_PER_1K, not {spec!r}")
    return model, Price(float(a), float(b))
