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
import re
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from gateway.audit import AuditSink
from gateway.errors import InvalidRequest, PermissionDenied, RedactionUnavailable
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

    async def vault(self, rules: PIIRules, subject: str, conversation: str | None) -> Vault | None:
        """The pseudonym vault for this request: none, a fresh one, or the conversation's (decrypted)."""
        if not rules.pseudonymize:
            return None
        if rules.conversation_ttl_s is None or conversation is None or self.vaults is None:
            return Vault()
        if not _CONVERSATION.match(conversation):
            raise InvalidRequest("X-Conversation-Id must be 1-128 characters of letters, digits and . _ : -",
                                 param="X-Conversation-Id")  # fmt: skip
        store = self.vaults
        try:
            return await asyncio.to_thread(store.load, store.key_for(subject, conversation))
        except VaultError as exc:
            await self.audit.commit("pii.vault_unreadable", subject, {"reason": str(exc)})
            raise RedactionUnavailable("the conversation's pseudonyms cannot be read, so the request was refused; "
                                       "start a new conversation") from None  # fmt: skip

    async def keep(self, vault: Vault | None, rules: PIIRules, subject: str, conversation: str | None) -> None:
        """Store the conversation's vault again (encrypted), when pseudonyms are kept per conversation."""
        if vault is None or rules.conversation_ttl_s is None or conversation is None or self.vaults is None:
            return
        store, ttl = self.vaults, rules.conversation_ttl_s
        await asyncio.to_thread(store.save, store.key_for(subject, conversation), vault, ttl)

    async def _analyze(self, texts: Sequence[str], rules: PIIRules, subject: str) -> list[list[Finding]]:
        if not rules.entities or not any(texts):
            return [[] for _ in texts]
        try:
            return await self.analyzer.analyze(texts, entities=rules.entities, threshold=rules.threshold,
                                               allow=rules.allow, timeout_s=rules.timeout_s)  # fmt: skip
        except PIIUnavailable as exc:
            if rules.on_error == "fail_open":
                await self.audit.commit("pii.fail_open", subject, {"reason": str(exc), "texts": len(texts)})
                return [[] for _ in texts]
            await self.audit.commit("pii.unavailable", subject, {"reason": str(exc)})
            raise RedactionUnavailable("personal-data screening is unavailable, so the request was refused; "
                                       "retry later") from None  # fmt: skip

    async def redact_texts(self, texts: Sequence[str], rules: PIIRules, subject: str,
                           vault: Vault | None) -> tuple[list[str], Counts]:  # fmt: skip
        """The texts of a request, redacted; 403 if one holds a blocked kind."""
        found = await self._analyze(texts, rules, subject)
        out: list[str] = []
        counts: Counts = Counter()
        for text, findings in zip(texts, found, strict=True):
            try:
                redacted, c = self.redactor.apply(text, findings, rules, "request", vault)
            except PIIBlocked as blocked:
                await self.audit.commit("pii.blocked", subject, {"entity": blocked.entity})
                raise PermissionDenied(f"request refused: it contains {blocked.entity} data, which policy does not "
                                       "allow to reach the model", code="pii_blocked") from None  # fmt: skip
            out.append(redacted)
            counts += c
        return out, counts

    async def redact_messages(self, messages: Sequence[dict[str, Any]], rules: PIIRules, subject: str,
                              vault: Vault | None) -> tuple[list[dict[str, Any]], Counts]:  # fmt: skip
        """Chat messages with every text field redacted (a copy; the input is not changed)."""
        copied, slots = fields.message_slots(messages)
        texts, counts = await self.redact_texts(fields.read(slots), rules, subject, vault)
        fields.write(slots, texts)
        return copied, counts

    async def answer(self, text: str, extra: dict[str, Any] | None, rules: PIIRules, subject: str,
                     vault: Vault | None) -> tuple[str, dict[str, Any] | None, Counts]:  # fmt: skip
        """A whole answer (and its tool calls) as the caller may see it."""
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

    def stream(
        self, rules: PIIRules, subject: str, vault: Vault | None, conversation: str | None = None
    ) -> StreamFilter:
        """A filter for one streamed answer."""
        return StreamFilter(self, rules, subject, vault, conversation)


class StreamFilter:
    """One streamed answer: its content and each tool call's arguments, through hold-back windows."""

    def __init__(self, guard: PIIGuard, rules: PIIRules, subject: str, vault: Vault | None,
                 conversation: str | None = None) -> None:  # fmt: skip
        self.guard, self.rules, self.subject, self.vault = guard, rules, subject, vault
        self.conversation = conversation
        self.counts: Counts = Counter()
        self._content = self._new()
        self._tools: dict[int, Any] = {}

    def _new(self) -> Any:
        if self.rules.see_unredacted:
            return PlaceholderRestorer(self.vault.values if self.vault else {})
        return StreamRedactor(self._analyze_one, self._apply, hold=self.rules.hold, min_release=self.rules.hold,
                              left_context=64)  # fmt: skip

    async def keep(self) -> None:
        """Store the conversation's vault after the answer (its pseudonyms may have grown)."""
        await self.guard.keep(self.vault, self.rules, self.subject, self.conversation)

    async def _analyze_one(self, text: str) -> list[Finding]:
        return (await self.guard._analyze([text], self.rules, self.subject))[0]

    def _apply(self, text: str, findings: Sequence[Finding]) -> str:
        out, counts = self.guard.redactor.apply(text, findings, self.rules, "response", self.vault)
        self.counts += counts
        return out

    @staticmethod
    async def _feed(f: Any, text: str) -> str:
        out = f.feed(text)
        return await out if not isinstance(out, str) else out

    @staticmethod
    async def _flush(f: Any, safe: bool = False) -> str:
        if isinstance(f, PlaceholderRestorer):
            return "" if safe else f.flush()
        released: str = await (f.flush_safe() if safe else f.flush())
        return released

    async def content(self, text: str) -> str:
        return await self._feed(self._content, text) if text else ""

    async def tool_calls(self, calls: list[Any]) -> list[Any]:
        """Tool-call deltas with their ``arguments`` pieces passed through one window per call."""
        out = []
        for call in calls:
            if not isinstance(call, dict):
                out.append(call)
                continue
            index = call.get("index", 0)
            fn = call.get("function")
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                window = self._tools.setdefault(index, self._new())
                fn = {**fn, "arguments": await self._feed(window, fn["arguments"])}
                call = {**call, "function": fn}
            out.append(call)
        return out

    async def finish(self, safe: bool = False) -> tuple[str, list[Any]]:
        """What is still held: all of it at the end (``safe=False``), or what is safe now (a timer flush)."""
        text = await self._flush(self._content, safe)
        tails = []
        for index, window in sorted(self._tools.items()):
            rest = await self._flush(window, safe)
            if rest:
                tails.append({"index": index, "function": {"arguments": rest}})
        return text, tails


async def chunks_with_timer(source: AsyncIterator[Any], idle_s: float) -> AsyncIterator[Any | None]:
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
        if pending is not None and not pending.done():
            pending.cancel()
