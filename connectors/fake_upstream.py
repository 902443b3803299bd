"""A fake OpenAI-compatible model server for tests, demos and benchmarks (seeded, tunable at runtime).

``python -m connectors.fake_upstream --port 8101 --latency-ms 120 --refusal-rate 0.02``

The knobs live in :class:`UpstreamSpec`; ``FakeUpstream.spec`` can be replaced while the server runs
(or via ``POST /_spec``) so a test can turn a healthy canary into a slow one mid-rollout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, replace
from typing import Any

from aiohttp import web

REFUSAL_TEXT = "I'm sorry, but I can't help with that request."


@dataclass(frozen=True)
class UpstreamSpec:
    model: str = "fake-model"
    latency_ms: float = 50.0  # median
    tail_ms: float | None = None  # P99; default 3x the median
    output_tokens: int = 120  # mean completion length
    refusal_rate: float = 0.0
    error_rate: float = 0.0
    error_status: int = 500
    refusal_finish_reason: str = "stop"  # what a refusal reports; "content_filter" like a provider's filter

    def draw_latency(self, rng: random.Random) -> float:
        """Log-normal with the given median and P99, the usual shape of model latency."""
        tail = self.tail_ms or 3 * self.latency_ms
        if self.latency_ms <= 0:
            return 0.0
        sigma = max(math.log(max(tail, self.latency_ms) / self.latency_ms) / 2.326, 1e-9)
        return self.latency_ms * math.exp(rng.gauss(0.0, sigma))

    def draw_tokens(self, rng: random.Random) -> int:
        return max(1, round(rng.gauss(self.output_tokens, self.output_tokens * 0.25)))


class FakeUpstream:
    def __init__(self, spec: UpstreamSpec | None = None, *, seed: int = 0) -> None:
        self.spec = spec or UpstreamSpec()
        self.rng = random.Random(seed)
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completion)
        app.router.add_post("/_spec", self._set_spec)
        app.router.add_get("/_spec", self._get_spec)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app())
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]  # port 0: ask the OS which port
        self.url = f"http://{host}:{sock.getsockname()[1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


    async def _answer(self, request: web.Request) -> tuple[dict[str, Any], str, int, str] | web.Response:
        body = await request.json()
        self.requests += 1
        spec, rng = self.spec, self.rng
        # Draw everything before sleeping so a seed gives the same sequence whatever the interleaving.
        latency, error, refused = spec.draw_latency(rng), rng.random() < spec.error_rate, rng.random()
        n_out = spec.draw_tokens(rng)
        await asyncio.sleep(latency / 1000.0)
        if error:
            return web.json_response(
                {"error": {"message": "upstream failure", "type": "server_error"}}, status=spec.error_status
            )
        if refused < spec.refusal_rate:
            return body, REFUSAL_TEXT, len(REFUSAL_TEXT.split()), spec.refusal_finish_reason
        return body, " ".join(["token"] * n_out), n_out, "stop"

    async def _chat(self, request: web.Request) -> web.Response:
        got = await self._answer(request)
        if isinstance(got, web.Response):
            return got
        body, text, n_out, finish = got
        return web.json_response(self._envelope(body, "chat.completion", n_out, text, chat=True, finish=finish))

    async def _completion(self, request: web.Request) -> web.Response:
        got = await self._answer(request)
        if isinstance(got, web.Response):
            return got
        body, text, n_out, finish = got
        return web.json_response(self._envelope(body, "text_completion", n_out, text, chat=False, finish=finish))

    def _envelope(
        self, body: dict[str, Any], obj: str, n_out: int, text: str, *, chat: bool, finish: str = "stop"
    ) -> dict[str, Any]:
        prompt = body.get("prompt") or " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        n_in = max(1, len(str(prompt).split()))
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {
            "id": f"fake-{uuid.UUID(int=self.rng.getrandbits(128)).hex}",
            "object": obj,
            "created": int(time.time()),
            "model": self.spec.model,
            "choices": [choice],
            "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
        }

    async def _set_spec(self, request: web.Request) -> web.Response:
        self.spec = replace(self.spec, **(await request.json()))
        return web.json_response(asdict(self.spec))

    async def _get_spec(self, request: web.Request) -> web.Response:
        return web.json_response(asdict(self.spec))


@contextlib.asynccontextmanager
async def serving(*specs: UpstreamSpec) -> AsyncIterator[list[FakeUpstream]]:
    """One started upstream per spec (seeded 1, 2, ... in order), stopped on exit."""
    ups = [FakeUpstream(spec, seed=i + 1) for i, spec in enumerate(specs)]
    try:
        for u in ups:
            await u.start()
        yield ups
    finally:
        for u in ups:
            await u.stop()



def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m connectors.fake_upstream", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8101)
    p.add_argument("--model", default="fake-model")
    p.add_argument("--latency-ms", type=float, default=50.0, help="median latency")
    p.add_argument("--tail-ms", type=float, default=None, help="P99 latency (default 3x median)")
    p.add_argument("--output-tokens", type=int, default=120, help="mean completion tokens")
    p.add_argument("--refusal-rate", type=float, default=0.0)
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--refusal-finish-reason", default="stop", help="finish_reason of a refusal, e.g. content_filter")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    spec = UpstreamSpec(
        model=a.model,
        latency_ms=a.latency_ms,
        tail_ms=a.tail_ms,
        output_tokens=a.output_tokens,
        refusal_rate=a.refusal_rate,
        error_rate=a.error_rate,
        refusal_finish_reason=a.refusal_finish_reason,
    )
    web.run_app(FakeUpstream(spec, seed=a.seed).app(), host=a.host, port=a.port)


if __name__ == "__main__":
    main()
