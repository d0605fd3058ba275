"""Public model names to backend targets, with fallback.

A route may name a fallback route. The fallback answers when the primary fails before its first
delta (unreachable, not ready, unloaded, erroring): the caller then sees which model answered in
the response's ``model`` field and in the ``x-gateway-model`` header. Once the first delta has
been produced the answer belongs to that model and there is no switching.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

from backends import chat_template
from backends.base import Backend, Delta, Embeddings, Generation, Target
from gateway.errors import ConfigError, InvalidRequest, NotFound, UpstreamError
from gateway.settings import ModelRoute, Settings

log = logging.getLogger(__name__)
_READY_TTL_S = 2.0


@dataclass(frozen=True, slots=True)
class Resolved:
    route: ModelRoute
    backend: Backend
    target: Target


@dataclass(slots=True)
class Answer:
    """An opened generation: who answers, its first delta, and the rest of the stream."""

    resolved: Resolved
    first: Delta
    rest: AsyncIterator[Delta]
    fallback_used: bool

    async def aclose(self) -> None:
        await _aclose(self.rest)


def _target(route: ModelRoute) -> Target:
    template = route.chat_template
    if route.chat_template_file is not None:
        try:
            template = route.chat_template_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"models.{route.name}.chat_template_file: {exc.strerror}") from None
    if template is not None:
        try:
            chat_template.compile_template(template)
        except chat_template.TemplateError as exc:
            raise ConfigError(f"models.{route.name}: chat template does not compile: {exc}") from None
    return Target(
        model=route.upstream_model,
        version=route.version,
        interface=route.interface,
        chat_template=template,
        embedding_input=route.embedding_input,
        embedding_output=route.embedding_output,
    )


class Router:
    """Built once from settings; holds no per-request state beyond a short readiness cache."""

    def __init__(self, settings: Settings, backends: dict[str, Backend]) -> None:
        self._routes = {m.name: Resolved(m, backends[m.backend], _target(m)) for m in settings.models}
        self._ready: dict[str, tuple[float, bool]] = {}

    @property
    def routes(self) -> list[Resolved]:
        return list(self._routes.values())

    def resolve(self, name: str, kind: str) -> Resolved:
        r = self._routes.get(name)
        if r is None:
            raise NotFound(f"The model {name!r} does not exist or you do not have access to it.", param="model")
        if r.route.kind != kind:
            what = "an embedding model" if r.route.kind == "embedding" else "a text generation model"
            raise InvalidRequest(f"model {name!r} is {what}", param="model", code="wrong_model_kind")
        return r

    def _chain(self, name: str, kind: str) -> list[Resolved]:
        primary = self.resolve(name, kind)
        fb = primary.route.fallback
        return [primary] if fb is None else [primary, self._routes[fb]]

    async def generate(self, name: str, gen: Generation, permitted: Callable[[str], bool] = lambda _: True) -> Answer:
        """Open a generation on the first route in the chain that produces a first delta.

        A fallback is skipped when ``permitted`` (the caller's policy) does not allow its model.
        """
        chain = [r for i, r in enumerate(self._chain(name, "llm")) if i == 0 or permitted(r.route.name)]
        error: UpstreamError | None = None
        for i, r in enumerate(chain):
            g = gen if gen.max_tokens is not None else replace(gen, max_tokens=r.route.default_max_tokens)
            stream = r.backend.generate(r.target, g)
            try:
                first = await stream.__anext__()
            except UpstreamError as exc:
                await _aclose(stream)
                if i + 1 < len(chain):
                    log.warning("model %r failed before its first byte (%s); falling back to %r",
                                r.route.name, exc.message, chain[i + 1].route.name)  # fmt: skip
                error = exc
                continue
            except BaseException:
                await _aclose(stream)
                raise
            return Answer(r, first, stream, fallback_used=i > 0)
        assert error is not None
        raise error

    async def embed(
        self, name: str, inputs: list[str], permitted: Callable[[str], bool] = lambda _: True
    ) -> tuple[Resolved, Embeddings, bool]:
        chain = [r for i, r in enumerate(self._chain(name, "embedding")) if i == 0 or permitted(r.route.name)]
        error: UpstreamError | None = None
        for i, r in enumerate(chain):
            try:
                return r, await r.backend.embed(r.target, inputs), i > 0
            except UpstreamError as exc:
                error = exc
        assert error is not None
        raise error

    async def is_ready(self, r: Resolved) -> bool:
        cached = self._ready.get(r.route.name)
        now = time.monotonic()
        if cached is not None and now - cached[0] < _READY_TTL_S:
            return cached[1]
        ok = await r.backend.ready(r.target)
        self._ready[r.route.name] = (now, ok)
        return ok

    async def readiness(self) -> dict[str, bool]:
        results = await asyncio.gather(*(self.is_ready(r) for r in self._routes.values()))
        return dict(zip(self._routes, results, strict=True))

    async def servable(self) -> tuple[dict[str, bool], dict[str, bool]]:
        """(ready, servable) by route name: servable when its model or its fallback is ready."""
        ready = await self.readiness()
        servable = {}
        for name, r in self._routes.items():
            fallback = r.route.fallback
            servable[name] = ready[name] or (fallback is not None and ready[fallback])
        return ready, servable

    async def offered(self) -> list[ModelRoute]:
        """Routes to list in /v1/models: those that can be served."""
        _, servable = await self.servable()
        return [r.route for r in self._routes.values() if servable[r.route.name]]


async def _aclose(stream: AsyncIterator[Delta]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
