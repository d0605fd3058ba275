"""Public model names to backend targets, with fallback and a circuit breaker per route.

A route may name a fallback route. The fallback answers when the primary fails before its first
delta (unreachable, not ready, unloaded, erroring): the caller then sees which model answered in
the response's ``model`` field and in the ``x-gateway-model`` header. Once the first delta has
been produced the answer belongs to that model and there is no switching. A route whose circuit is
open (``gateway/breaker.py``) is skipped: its fallback answers, or the request fails at once with 503.
Each backend has a bulkhead (``gateway/bulkhead.py``); before the first byte an unavailable backend is
retried ``retries`` times, and a model that sends nothing within ``first_byte_timeout_s`` has failed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace

from backends import chat_template
from backends.base import Backend, Delta, Embeddings, Generation, Target
from gateway.breaker import Breaker, Listener, State
from gateway.bulkhead import Bulkhead
from gateway.errors import (
    ConfigError,
    GatewayError,
    InvalidRequest,
    NotFound,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.observability import tracing
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
    """An opened generation: who answers, its first delta, and the rest of the stream.

    ``aclose`` must be called when the caller is done with it: it closes the stream and frees the backend's
    bulkhead slot."""

    resolved: Resolved
    first: Delta
    rest: AsyncIterator[Delta]
    fallback_used: bool
    release: Callable[[], None] | None = None

    async def aclose(self) -> None:
        try:
            await _aclose(self.rest)
        finally:
            release, self.release = self.release, None
            if release is not None:
                release()


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
    """Built once from settings; holds no per-request state beyond a short readiness cache and the breakers."""

    def __init__(self, settings: Settings, backends: dict[str, Backend]) -> None:
        self._routes = {m.name: Resolved(m, backends[m.backend], _target(m)) for m in settings.models}
        self._ready: dict[str, tuple[float, bool]] = {}
        self.breaker_listeners: list[Listener] = []
        """Told of every circuit transition (the app writes a ledger entry); they must not raise."""
        self.breakers = {m.name: Breaker(m.name, m.breaker, self._changed) for m in settings.models}
        self._limits = dict(settings.backends)
        self.bulkheads = {name: Bulkhead(name, b.max_concurrency, b.max_queue, b.queue_timeout_s)
                          for name, b in settings.backends.items()}  # fmt: skip

    def _changed(self, route: str, old: State, new: State, reason: str) -> None:
        (log.warning if new == "open" else log.info)("circuit of model %r: %s -> %s (%s)", route, old, new, reason)
        for listener in self.breaker_listeners:
            listener(route, old, new, reason)

    def _open_error(self, r: Resolved) -> UpstreamUnavailable:
        wait = self.breakers[r.route.name].retry_after_s()
        return UpstreamUnavailable(
            f"model {r.route.name!r} is failing and its circuit is open: it is not called until "
            f"{math.ceil(wait)} s from now", headers={"retry-after": str(max(1, math.ceil(wait)))},
        )  # fmt: skip

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

    def configured_version(self, name: str) -> str:
        return self._routes[name].route.version  # a pin replaces the target only, never the configured route

    def pin(self, name: str, version: str) -> None:
        """Make route ``name`` use ``version`` of its model ("" restores the configured version)."""
        r = self._routes[name]
        wanted = version or r.route.version
        if r.target.version != wanted:  # one reference swap: a request resolves the old or the new target
            self._routes[name] = replace(r, target=replace(r.target, version=wanted))
            self._ready.pop(name, None)

    def apply_pins(self, pins: Mapping[str, str]) -> None:
        """Pin every route named in ``pins`` (model -> version); names this configuration lacks are ignored."""
        for name, version in pins.items():
            if name in self._routes:
                self.pin(name, version)

    def _chain(self, name: str, kind: str, permitted: Callable[[str], bool]) -> list[Resolved]:
        """The route, then its fallback if it has one that ``permitted`` (the caller's policy) allows."""
        primary = self.resolve(name, kind)
        fb = primary.route.fallback
        return [primary] if fb is None or not permitted(fb) else [primary, self._routes[fb]]

    async def generate(self, name: str, gen: Generation, permitted: Callable[[str], bool] = lambda _: True) -> Answer:
        """Open a generation on the first route in the chain that produces a first delta.

        A fallback is skipped when ``permitted`` (the caller's policy) does not allow its model.
        """
        chain = self._chain(name, "llm", permitted)
        error: GatewayError | None = None
        for i, r in enumerate(chain):
            with tracing.span("gateway.backend", self._attributes(r, "generate", i > 0)) as span:
                entered = await self._enter(r)
                if isinstance(entered, GatewayError):
                    tracing.failed(span, entered)
                    error = error or entered
                    continue
                breaker, bulkhead = entered
                g = gen if gen.max_tokens is not None else replace(gen, max_tokens=r.route.default_max_tokens)
                try:
                    stream, first = await self._open(r, g)
                except UpstreamError as exc:
                    bulkhead.release()
                    breaker.failure(exc.message)
                    tracing.failed(span, exc)
                    if i + 1 < len(chain):
                        log.warning("model %r failed before its first byte (%s); falling back to %r",
                                    r.route.name, exc.message, chain[i + 1].route.name)  # fmt: skip
                    error = exc
                    continue
                except BaseException:
                    bulkhead.release()
                    breaker.release()
                    raise
                breaker.success()
                return Answer(r, first, stream, fallback_used=i > 0, release=bulkhead.release)
        assert error is not None
        raise error

    def _attributes(self, r: Resolved, operation: str, fallback: bool) -> dict[str, str | bool]:
        """The span attributes of an attempt on route ``r``: configured names only."""
        return {"gateway.operation": operation, "gateway.model": r.route.name, "gateway.backend.name": r.route.backend,
                "gen_ai.request.model": r.target.model, "gateway.model.version": r.target.version,
                "gateway.fallback": fallback, "gateway.breaker.state": self.breakers[r.route.name].state}  # fmt: skip

    async def _enter(self, r: Resolved) -> tuple[Breaker, Bulkhead] | GatewayError:
        """The route's breaker and a slot of its backend's bulkhead, or why the route cannot be tried now."""
        breaker, bulkhead = self.breakers[r.route.name], self.bulkheads[r.route.backend]
        if not breaker.allow():
            return self._open_error(r)
        try:
            await bulkhead.acquire()
        except RateLimited as exc:  # busy is not failing: the breaker is not told
            breaker.release()
            return exc
        return breaker, bulkhead

    async def _open(self, r: Resolved, gen: Generation) -> tuple[AsyncIterator[Delta], Delta]:
        """The stream and its first delta, within the first-byte timeout, retrying an unavailable backend."""
        limits = self._limits[r.route.backend]
        for attempt in range(limits.retries + 1):
            stream = r.backend.generate(r.target, gen)
            try:
                with tracing.span("gateway.backend.first_byte", {"gateway.backend.try": attempt}):
                    async with asyncio.timeout(limits.first_byte_timeout_s):  # no extra task, unlike wait_for
                        first = await anext(stream)
            except TimeoutError:
                await _aclose(stream)
                raise UpstreamTimeout(f"model {r.route.name!r} sent nothing within "
                                      f"{limits.first_byte_timeout_s:g} s") from None  # fmt: skip
            except UpstreamUnavailable as exc:
                await _aclose(stream)
                if attempt == limits.retries:
                    raise
                log.info("model %r unavailable (%s); retry %d of %d", r.route.name, exc.message, attempt + 1,
                         limits.retries)  # fmt: skip
                await asyncio.sleep(0.1 * 2**attempt)
                continue
            except BaseException:
                await _aclose(stream)
                raise
            return stream, first
        raise AssertionError("unreachable")  # pragma: no cover

    async def embed(
        self, name: str, inputs: list[str], permitted: Callable[[str], bool] = lambda _: True
    ) -> tuple[Resolved, Embeddings, bool]:
        chain = self._chain(name, "embedding", permitted)
        error: GatewayError | None = None
        for i, r in enumerate(chain):
            with tracing.span("gateway.backend", self._attributes(r, "embed", i > 0)) as span:
                entered = await self._enter(r)
                if isinstance(entered, GatewayError):
                    tracing.failed(span, entered)
                    error = error or entered
                    continue
                breaker, bulkhead = entered
                try:
                    result = await r.backend.embed(r.target, inputs)
                except UpstreamError as exc:
                    breaker.failure(exc.message)
                    tracing.failed(span, exc)
                    error = exc
                    continue
                except BaseException:
                    breaker.release()
                    raise
                finally:
                    bulkhead.release()
                breaker.success()
                return r, result, i > 0
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
