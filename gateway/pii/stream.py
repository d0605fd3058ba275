"""Redaction of streamed text without leaking split PII, and restoring of placeholders.

A PII value split across two SSE chunks (``john.sm`` | ``ith@example.com``) is found by no
analysis of either chunk alone. `StreamRedactor` therefore holds text back and releases it only
up to a cut point C in its buffer such that

1. C is at least ``hold`` characters behind the end of the buffer (the head of the stream);
2. C is a whitespace boundary (a hard cut at ``len(buffer) - hold`` if the buffer has none);
3. C is not inside any finding of the analysis of ``left_context_tail + buffer``.

Proof sketch. Take a PII value of length <= ``hold`` that straddles C. Its end is at most
``hold`` characters past C, and by (1) the buffer extends at least ``hold`` characters past C, so
the value is complete in the buffer and the analyzer sees it whole. (3) then moves C back to its
start. The released part is redacted with the same analysis, so what leaves is what a one-shot
analysis sees; a value that began in the already released left context is clipped to the part
not yet released. Whitespace cuts also keep words whole for the NER model.

Residual risk: a value longer than ``hold`` that contains whitespace (an IBAN with spaces at a
small ``hold``) or that is hard-cut in a long run without whitespace can straddle C while only
a part of it has arrived. That part leaves as whatever the analyzer makes of it, often
unredacted. Choose ``hold`` at least as long as the longest value to catch (IBAN: 34 characters
plus 8 spaces; e-mail addresses are usually shorter than 64).

Nothing here imports Presidio: the gateway injects its off-loop analyzer and its operators.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar

__all__ = ["FindingLike", "PlaceholderRestorer", "StreamRedactor", "restore"]


class FindingLike(Protocol):
    """What the redactor needs of a finding: `gateway.pii.engine.Finding` is one.

    It must be a dataclass: the redactor clips findings with `dataclasses.replace`.
    """

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    @property
    def entity(self) -> str:
        """The entity type, such as ``EMAIL_ADDRESS``."""

    @property
    def start(self) -> int:
        """The offset of the first character of the value in the analysed text."""

    @property
    def end(self) -> int:
        """The offset just past the value."""

    @property
    def score(self) -> float:
        """The analyzer's confidence."""


F = TypeVar("F", bound=FindingLike)


def _whitespace_cut(buf: str, limit: int) -> int:
    """The last whitespace boundary at or before ``limit``, else ``limit`` (a hard cut)."""
    for i in range(limit, 0, -1):
        if buf[i].isspace() or buf[i - 1].isspace():
            return i
    return limit


class StreamRedactor(Generic[F]):
    """Redacts one stream: one per choice's ``content``, one per tool call's ``arguments``.

    ``analyze`` finds PII in a text, ``apply`` replaces the findings (given relative to the text
    it receives, already clipped to it). Calls are serialised by a lock, but the caller should
    await each call before making the next one, so that the outputs go out in order. If
    ``analyze`` raises, the exception propagates and nothing is released (fail closed).
    """

    def __init__(
        self,
        analyze: Callable[[str], Awaitable[Sequence[F]]],
        apply: Callable[[str, Sequence[F]], str],
        *,
        hold: int = 64,
        min_release: int = 64,
        left_context: int = 64,
    ) -> None:
        if hold < 1 or min_release < 0 or left_context < 0:
            raise ValueError("hold must be >= 1, min_release and left_context >= 0")
        self._analyze = analyze
        self._apply = apply
        self.hold = hold
        self.min_release = min_release
        self.left_context = left_context
        self._buf = ""  # received, not yet released
        self._ctx = ""  # raw tail of the released text: context words such as "SSN:" raise scores
        self._fresh = 0  # characters received since the last analysis, to bound the analyses
        self._lock = asyncio.Lock()

    @property
    def held(self) -> int:
        """The number of characters received and not yet released."""
        return len(self._buf)

    async def feed(self, chunk: str) -> str:
        """Take the next chunk of the stream; return the text that may be released now, maybe ""."""
        async with self._lock:
            self._buf += chunk
            self._fresh += len(chunk)
            # Analysing costs a few ms per call: do it once per min_release new characters.
            if self._fresh < self.min_release or len(self._buf) < self.hold + self.min_release:
                return ""
            return await self._release_safe()

    async def flush_safe(self) -> str:
        """Release what is safe now, regardless of ``min_release``: for a timer when the stream stalls."""
        async with self._lock:
            return await self._release_safe()

    async def flush(self) -> str:
        """Release the rest, redacted, at the end of the stream."""
        async with self._lock:
            if not self._buf:
                return ""
            off = len(self._ctx)
            findings = await self._analyze(self._ctx + self._buf)
            return self._release(len(self._buf), findings, off)

    async def _release_safe(self) -> str:
        limit = len(self._buf) - self.hold
        if limit <= 0:
            return ""
        cut = _whitespace_cut(self._buf, limit)
        off = len(self._ctx)
        self._fresh = 0
        findings = await self._analyze(self._ctx + self._buf)
        # Right to left by start: once C moves to a start s, only findings starting before s can
        # straddle it, and they come later, so one pass also handles chains of overlaps.
        for f in sorted(findings, key=lambda f: f.start, reverse=True):
            start, end = f.start - off, f.end - off
            if start < cut < end:
                cut = max(start, 0)  # began in the released context: wait, it is clipped later
        if cut <= 0:
            return ""
        return self._release(cut, findings, off)

    def _release(self, cut: int, findings: Sequence[F], off: int) -> str:
        part = self._buf[:cut]
        inside = [
            dataclasses.replace(f, start=max(f.start - off, 0), end=min(f.end - off, cut))
            for f in findings
            if f.end > off and f.start < off + cut
        ]
        out = self._apply(part, inside)
        self._ctx = (self._ctx + part)[-self.left_context :] if self.left_context else ""
        self._buf = self._buf[cut:]
        return out


PLACEHOLDER = re.compile(r"<[A-Z][A-Z_]*_[0-9]+>")
# A text that more characters could still turn into a placeholder. Digits follow an underscore.
_PARTIAL = re.compile(r"<(?:[A-Z][A-Z_]*(?:(?<=_)[0-9]+)?)?\Z")


def restore(text: str, mapping: Mapping[str, str]) -> str:
    """Replace every known placeholder in ``text`` by its original; unknown ones stay as they are."""
    return PLACEHOLDER.sub(lambda m: mapping.get(m.group(0), m.group(0)), text)


class PlaceholderRestorer:
    """Restores placeholders such as ``<PERSON_1>`` in a stream, even when split across chunks.

    It holds back a trailing ``<...`` that could still become a placeholder, for at most
    ``max_placeholder`` characters, so its lag is bounded.
    """

    def __init__(self, mapping: Mapping[str, str], *, max_placeholder: int = 40) -> None:
        self._mapping = mapping
        self.max_placeholder = max_placeholder
        self._buf = ""

    @property
    def held(self) -> int:
        """The number of characters received and not yet released."""
        return len(self._buf)

    def feed(self, chunk: str) -> str:
        """Take the next chunk; return the text that may be released now, restored, maybe ""."""
        self._buf += chunk
        keep = len(self._buf)
        i = self._buf.rfind("<")
        # Only the last "<" can start a partial placeholder: a placeholder holds no other "<".
        if i >= 0 and len(self._buf) - i <= self.max_placeholder and _PARTIAL.match(self._buf, i):
            keep = i
        out, self._buf = self._buf[:keep], self._buf[keep:]
        return restore(out, self._mapping)

    def flush(self) -> str:
        """Release the rest at the end of the stream."""
        out, self._buf = self._buf, ""
        return restore(out, self._mapping)
