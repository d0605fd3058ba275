"""The request path's PII step: redact what goes to a backend, and what comes back.

``PIIGuard`` asks the analyzer (worker processes, off the event loop) about every text of a
request in one call, applies the operators of the caller's rules, and refuses blocked kinds with
403. Answers are redacted too, unless the caller's role may see them unredacted; then only the
request's pseudonyms are put back. Streams go through a hold-back window (``stream.py``), so no
value is released before the analyzer has seen it whole.

Fail closed: if the analyzer raises, times out or is not ready, the request gets 503 and the
event is an audit entry. Only a policy that says ``on_error: fail_open`` lets the text through,
and that too is an audit entry. Counts per kind and operator go to the ledger; values never do.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import replace
from typing import Any, Protocol

from backends.base import Generation
from gateway.audit import AuditSink
from gateway.errors import InvalidRequest, PermissionDenied, RedactionUnavailable
from gateway.observability import tracing
from gateway.pii import fields
from gateway.pii.engine import Finding, PIIUnavailable
from gateway.pii.policy import PIIRules
from gateway.pii.redact import Counts, PIIBlocked, Redactor, Vault
from gateway.pii.stream import PlaceholderRestorer, StreamRedactor, restore
from gateway.pii.vaults import VaultError, VaultStore


class Analyzer(Protocol):
    @property
    def ready(self) -> bool:
        """Whether it can answer now (its workers are up)."""
        ...

    async def analyze(self, texts: Sequence[str], *, entities: Sequence[str], threshold: float,
                      allow: Sequence[str] = (), timeout_s: float) -> list[list[Finding]]:  # fmt: skip
        """Findings for each text; raises PIIUnavailable when it cannot answer in time."""
        ...


def counts_json(counts: Counts) -> dict[str, int]:
    """``{"EMAIL_ADDRESS:replace": 2}``: what the ledger records of the findings."""
    return {f"{entity}:{op}": n for (entity, op), n in sorted(counts.items())}


_CONVERSATION = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class PIIGuard:
    def __init__(self, analyzer: Analyzer, redactor: Redactor, audit: AuditSink,
                 vaults: VaultStore | None = None) -> None:  # fmt: skip
        self.analyzer = analyzer
        self.redactor = redactor
        self.audit = audit
        self.vaults = vaults
        self._locks: dict[bytes, asyncio.Lock] = {}
        self._waiting: dict[bytes, int] = {}

    async def redact_request(self, gen: Generation, rules: PIIRules, subject: str,
                             conversation: str | None) -> tuple[Generation, Counts, Vault | None]:  # fmt: skip
        """``gen`` redacted, with its pseudonym vault: none, one for this request, or the conversation's.

        A conversation's vault is loaded, used and stored back with a compare-and-swap on its version, under
        a lock per conversation in this process; when another replica changed it meanwhile, the work is
        redone on the new version, so two values never get the same placeholder."""
        if not rules.pseudonymize or rules.conversation_ttl_s is None or conversation is None or self.vaults is None:
            vault = Vault() if rules.pseudonymize else None
            redacted, counts = await self.redact_generation(gen, rules, subject, vault)
            return redacted, counts, vault
        if not _CONVERSATION.match(conversation):
            raise InvalidRequest("X-Conversation-Id must be 1-128 characters of letters, digits and . _ : -",
                                 param="X-Conversation-Id")  # fmt: skip
        store, ttl = self.vaults, rules.conversation_ttl_s
        vid = store.key_for(subject, conversation)
        lock = self._locks.setdefault(vid, asyncio.Lock())
        self._waiting[vid] = self._waiting.get(vid, 0) + 1
        try:
            async with lock:
                for _ in range(5):
                    try:
                        loaded, version = await asyncio.to_thread(store.load, vid)
                    except VaultError as exc:
                        await self.audit.commit("pii.vault_unreadable", subject, {"reason": str(exc)})
                        raise RedactionUnavailable("the conversation's pseudonyms cannot be read, so the request "
                                                   "was refused; start a new conversation") from None  # fmt: skip
                    redacted, counts = await self.redact_generation(gen, rules, subject, loaded)
                    if await asyncio.to_thread(store.save, vid, loaded, ttl, version):
                        return redacted, counts, loaded
        finally:
            self._waiting[vid] -= 1
            if not self._waiting[vid]:
                del self._waiting[vid], self._locks[vid]
        raise RedactionUnavailable("the conversation's pseudonyms kept changing under other requests; retry")

    async def _analyze(self, texts: Sequence[str], rules: PIIRules, subject: str,
                       state: dict[str, bool] | None = None) -> list[list[Finding]]:  # fmt: skip
        """Findings per text. ``state`` carries, for one stream, whether failing open was already audited."""
        if not rules.entities or not any(texts):
            return [[] for _ in texts]
        try:
            return await self.analyzer.analyze(texts, entities=rules.entities, threshold=rules.threshold,
                                               allow=rules.allow, timeout_s=rules.timeout_s)  # fmt: skip
        except PIIUnavailable as exc:
            if rules.on_error == "fail_open":
                if state is None or not state.get("failed_open"):
                    await self.audit.commit("pii.fail_open", subject, {"reason": str(exc), "texts": len(texts)})
                    if state is not None:
                        state["failed_open"] = True
                return [[] for _ in texts]
            await self.audit.commit("pii.unavailable", subject, {"reason": str(exc)})
            raise RedactionUnavailable("personal-data screening is unavailable, so the request was refused; "
                                       "retry later") from None  # fmt: skip

    async def redact_texts(self, texts: Sequence[str], rules: PIIRules, subject: str,
                           vault: Vault | None) -> tuple[list[str], Counts]:  # fmt: skip
        """The texts of a request, redacted; 403 if one holds a blocked kind."""
        with tracing.span("gateway.pii.request") as span:
            found = await self._analyze(texts, rules, subject)
            out: list[str] = []
            counts: Counts = Counter()
            for text, findings in zip(texts, found, strict=True):
                try:
                    redacted, c = self.redactor.apply(text, findings, rules, "request", vault)
                except PIIBlocked as blocked:
                    await self.audit.commit("pii.blocked", subject, {"entity": blocked.entity})
                    raise PermissionDenied(f"request refused: it contains {blocked.entity} data, which policy does "
                                           "not allow to reach the model", code="pii_blocked") from None  # fmt: skip
                out.append(redacted)
                counts += c
            span.set_attribute("gateway.pii.findings", sum(counts.values()))
            return out, counts

    async def redact_generation(self, gen: Generation, rules: PIIRules, subject: str,
                                vault: Vault | None) -> tuple[Generation, Counts]:  # fmt: skip
        """``gen`` with every text that would reach the backend redacted: messages (every string but
        structural ones), the prompt, stop sequences and fields forwarded as they are (``user``, ``tools``...)."""
        payload = fields.copy({"messages": list(gen.messages), "prompt": gen.prompt, "stop": list(gen.stop),
                               "passthrough": gen.passthrough})  # fmt: skip
        found = fields.slots(payload)
        texts, counts = await self.redact_texts(fields.read(found), rules, subject, vault)
        fields.write(found, texts)
        return replace(gen, messages=payload["messages"], prompt=payload["prompt"], stop=tuple(payload["stop"]),
                       passthrough=payload["passthrough"]), counts  # fmt: skip

    async def answer(self, text: str, extra: dict[str, Any] | None, rules: PIIRules, subject: str,
                     vault: Vault | None) -> tuple[str, dict[str, Any] | None, Counts]:  # fmt: skip
        """A whole answer (and its tool calls) as the caller may see it."""
        with tracing.span("gateway.pii.answer", {"gateway.pii.stream": False}) as span:
            out = await self._answer(text, extra, rules, subject, vault)
            span.set_attribute("gateway.pii.findings", sum(out[2].values()))
            return out

    async def _answer(self, text: str, extra: dict[str, Any] | None, rules: PIIRules, subject: str,
                      vault: Vault | None) -> tuple[str, dict[str, Any] | None, Counts]:  # fmt: skip
        if rules.see_unredacted:
            mapping = vault.values if vault else {}
            if extra:
                copied, slots = fields.message_slots([extra])
                fields.write(slots, [restore(t, mapping) for t in fields.read(slots)])
                extra = copied[0]
            return restore(text, mapping), extra, Counter()
        copied, slots = fields.message_slots([{"content": text, **(extra or {})}])
        texts = fields.read(slots)
        found = await self._analyze(texts, rules, subject)
        counts: Counts = Counter()
        out = []
        for t, f in zip(texts, found, strict=True):
            redacted, c = self.redactor.apply(t, f, rules, "response", vault)
            out.append(redacted)
            counts += c
        fields.write(slots, out)
        message = copied[0]
        new_text = message.pop("content")
        return new_text, (message or None) if extra is not None else None, counts

    def stream(self, rules: PIIRules, subject: str, vault: Vault | None) -> StreamFilter:
        """A filter for one streamed answer."""
        return StreamFilter(self, rules, subject, vault)


Path = tuple[str | int, ...]


class StreamFilter:
    """One streamed answer: every text field (content, each tool call's arguments, reasoning, refusals...)
    through a hold-back window of its own, so no value ever leaves partly."""

    def __init__(self, guard: PIIGuard, rules: PIIRules, subject: str, vault: Vault | None) -> None:
        self.guard, self.rules, self.subject, self.vault = guard, rules, subject, vault
        self.counts: Counts = Counter()
        self._windows: dict[Path, Any] = {}
        self._state: dict[str, bool] = {}

    def _window(self, path: Path) -> Any:
        window = self._windows.get(path)
        if window is None:
            if self.rules.see_unredacted:
                window = PlaceholderRestorer(self.vault.values if self.vault else {})
            else:
                window = StreamRedactor(self._analyze_one, self._apply, hold=self.rules.hold,
                                        min_release=self.rules.hold, left_context=64)  # fmt: skip
            self._windows[path] = window
        return window

    async def _analyze_one(self, text: str) -> list[Finding]:
        with tracing.span("gateway.pii.answer", {"gateway.pii.stream": True}) as span:  # one per window analyzed
            found = (await self.guard._analyze([text], self.rules, self.subject, self._state))[0]
            span.set_attribute("gateway.pii.findings", len(found))
            return found

    def _apply(self, text: str, findings: Sequence[Finding]) -> str:
        out, counts = self.guard.redactor.apply(text, findings, self.rules, "response", self.vault)
        self.counts += counts
        return out

    async def _feed(self, path: Path, text: str) -> str:
        if not text:
            return ""
        out = self._window(path).feed(text)
        released: str = await out if not isinstance(out, str) else out
        return released

    async def delta(self, text: str, extra: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
        """One delta as the caller may see it now: what its windows release."""
        released = await self._feed(("content",), text)
        if not extra:
            return released, extra
        return released, await self._filter(extra, (), None)

    async def _filter(self, value: Any, path: Path, parent: str | None) -> Any:
        if isinstance(value, str):
            return await self._feed(path, value)
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if key in fields.STRUCTURAL or (key == "name" and parent in _NAMED):
                    out[key] = item
                else:
                    out[key] = await self._filter(item, (*path, key), key)
            return out
        if isinstance(value, list):
            if path == ("tool_calls",):  # tool-call deltas name their call by "index", not by position
                return [await self._filter(item, (*path, item.get("index", i) if isinstance(item, dict) else i),
                                           parent) for i, item in enumerate(value)]  # fmt: skip
            return [await self._filter(item, (*path, i), parent) for i, item in enumerate(value)]
        return value

    async def finish(self, safe: bool = False) -> tuple[str, dict[str, Any] | None]:
        """What is still held: all of it at the end (``safe=False``), or what is safe now (a timer flush)."""
        text = ""
        extra: dict[str, Any] = {}
        for path, window in list(self._windows.items()):
            if isinstance(window, PlaceholderRestorer):
                rest = "" if safe else window.flush()
            else:
                rest = await (window.flush_safe() if safe else window.flush())
            if not rest:
                continue
            if path == ("content",):
                text = rest
            elif path[:1] == ("tool_calls",) and len(path) >= 2:
                call: dict[str, Any] = {"index": path[1]}
                _place(call, path[2:], rest)
                extra.setdefault("tool_calls", []).append(call)
            else:
                _place(extra, path, rest)
        return text, extra or None


def _place(target: dict[str, Any], path: Path, text: str) -> None:
    """Put ``text`` at ``path`` in nested dicts (list positions become keys: deltas are partial objects)."""
    for part in path[:-1]:
        target = target.setdefault(str(part), {})
    target[str(path[-1])] = text


_NAMED = frozenset({"function", "function_call", "tool_choice"})


async def chunks_with_timer(source: AsyncIterator[Any], idle_s: float) -> AsyncGenerator[Any | None, None]:
    """``source``'s items, and ``None`` whenever it stays silent for ``idle_s`` (time for a safe flush)."""
    pending: asyncio.Task[Any] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({pending}, timeout=idle_s)
            if not done:
                yield None
                continue
            task, pending = pending, None
            try:
                item = task.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()  # and wait for it: the source must not be running when its owner closes it
            with contextlib.suppress(BaseException):
                await pending
