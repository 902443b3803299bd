"""Reassembles an OpenAI streaming (server-sent events) answer so the router can measure it."""

from __future__ import annotations

from typing import Any

import orjson


class SSEAccumulator:
    def __init__(self) -> None:
        self._pending = b""
        self._texts: list[str] = []
        self._chunks = 0
        self.model: str | None = None
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.refusal: Any = None

    def feed(self, data: bytes) -> None:
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            self._line(line.strip())

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        payload = line[5:].strip()
        if not payload or payload == b"[DONE]":
            return
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(obj, dict):
            return
        self.model = self.model or obj.get("model")
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        for choice in obj.get("choices") or ():
            delta = choice.get("delta") or {}
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str) and content:
                self._texts.append(content)
                self._chunks += 1
            elif isinstance(choice.get("text"), str):
                self._texts.append(choice["text"])
                self._chunks += 1
            if isinstance(delta, dict) and delta.get("refusal"):
                self.refusal = delta["refusal"]
            self.finish_reason = choice.get("finish_reason") or self.finish_reason

    def as_response(self) -> dict[str, Any]:
        """A non-streaming-shaped response. Without ``usage`` (the client did not ask for
        ``stream_options.include_usage``) the content chunk count stands in for output tokens: the
        usual servers send about one token per chunk."""
        usage = self.usage or {"completion_tokens": self._chunks}
        message: dict[str, Any] = {"content": "".join(self._texts)}
        if self.refusal:
            message["refusal"] = self.refusal
        return {
            "model": self.model,
            "usage": usage,
            "choices": [{"message": message, "finish_reason": self.finish_reason}],
        }
