"""The analyzer pool: detections per profile, cache, fail-closed paths, no network."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from gateway.pii._worker import FAULT_TRIGGER
from gateway.pii.engine import Finding, PIIUnavailable, luhn_ok
from gateway.pii.pool import AnalyzerPool
from tests.pii.conftest import STRUCTURED

T = 30.0  # generous: the shared test machine is noisy

CASES = [
    ("EMAIL_ADDRESS", "Please forward this to dana.whitfield@example.org today.", "dana.whitfield@example.org"),
    ("PHONE_NUMBER", "Call me on my cell at (212) 736-5000 after lunch.", "(212) 736-5000"),
    ("CREDIT_CARD", "My Visa card 4111 1111 1111 1111 was charged twice.", "4111 1111 1111 1111"),
    ("CREDIT_CARD", "The Mastercard 2221 0000 0000 0009 expired.", "2221 0000 0000 0009"),
    ("CREDIT_CARD", "Refund card number 2720991234567894 please.", "2720991234567894"),
    ("IBAN_CODE", "Wire it to IBAN DE89 3704 0044 0532 0130 00 by Friday.", "DE89 3704 0044 0532 0130 00"),
    ("IP_ADDRESS", "The login came from 203.0.113.77 at night.", "203.0.113.77"),
    ("US_SSN", "His SSN is 536-22-8431, keep it safe.", "536-22-8431"),
]


def spans(text: str, found: list[Finding], entity: str) -> list[str]:
    return [text[f.start : f.end] for f in found if f.entity == entity]


@pytest.mark.parametrize(("entity", "text", "value"), CASES)
@pytest.mark.parametrize("profile", ["full", "patterns"])
async def test_structured_detections(pii_full, pii_patterns, profile, entity, text, value):
    """Each structured identifier, including Mastercard 2-series, is found in both profiles."""
    pool = pii_full if profile == "full" else pii_patterns
    [found] = await pool.analyze([text], entities=STRUCTURED, threshold=0.5, timeout_s=T)
    assert value in spans(text, found, entity)


async def test_person_in_full_only(pii_full, pii_patterns):
    """PERSON comes from spaCy NER: found in full; the patterns profile refuses to be asked for it."""
    text = "Write a short apology to Margaret Holloway for the delay."
    [found] = await pii_full.analyze([text], entities=["PERSON"], threshold=0.5, timeout_s=T)
    assert spans(text, found, "PERSON") == ["Margaret Holloway"]
    assert "PERSON" not in pii_patterns.supported_entities
    with pytest.raises(ValueError, match="PERSON"):
        await pii_patterns.analyze([text], entities=["PERSON"], threshold=0.5, timeout_s=T)


def test_luhn():
    """The Luhn check behind the 2-series recognizer."""
    assert luhn_ok("2221000000000009") and luhn_ok("4111111111111111")
    assert not luhn_ok("2221000000000008")


async def test_mastercard_2_series_needs_luhn(pii_patterns):
    """A 2-series number failing the Luhn check is not a card; bounds of the BIN range hold."""
    text = "Card 2221 0000 0000 0008, and 2721000000000006, and 2220000000000003."
    [found] = await pii_patterns.analyze([text], entities=["CREDIT_CARD"], threshold=0.5, timeout_s=T)
    assert spans(text, found, "CREDIT_CARD") == []


async def test_allow_list(pii_patterns):
    """Allow-listed values (exact match) are not reported; others still are."""
    text = "Mail support@acme.example or jo.bloggs@example.com"
    [found] = await pii_patterns.analyze(
        [text], entities=["EMAIL_ADDRESS"], threshold=0.5, allow=["support@acme.example"], timeout_s=T
    )
    assert spans(text, found, "EMAIL_ADDRESS") == ["jo.bloggs@example.com"]


async def test_threshold(pii_patterns):
    """A bare phone number scores 0.4: reported at 0.3, dropped at 0.5; context lifts it."""
    bare = "It is 212-736-5000 later."
    [low] = await pii_patterns.analyze([bare], entities=["PHONE_NUMBER"], threshold=0.3, timeout_s=T)
    [high] = await pii_patterns.analyze([bare], entities=["PHONE_NUMBER"], threshold=0.5, timeout_s=T)
    assert [round(f.score, 2) for f in low] == [0.4] and high == []
    context = "Please call 212-736-5000 later."
    [found] = await pii_patterns.analyze([context], entities=["PHONE_NUMBER"], threshold=0.5, timeout_s=T)
    assert spans(context, found, "PHONE_NUMBER") == ["212-736-5000"]


async def test_empty_texts_and_duplicates(pii_patterns):
    """Empty texts skip the pool; one call returns a list per text, duplicates analyzed once."""
    before = pii_patterns.stats
    text = "ssn 536-22-8431 (uncached 7f3a)"
    out = await pii_patterns.analyze(["", text, "   ", text], entities=["US_SSN"], threshold=0.5, timeout_s=T)
    assert out[0] == out[2] == [] and out[1] == out[3] and len(out[1]) == 1
    after = pii_patterns.stats
    assert after.worker_calls - before.worker_calls == 1
    assert after.cache_misses - before.cache_misses == 1
    assert await pii_patterns.analyze(["", " "], entities=["US_SSN"], threshold=0.5, timeout_s=T) == [[], []]
    assert pii_patterns.stats.worker_calls == after.worker_calls


async def test_cache_hit_skips_workers(pii_full):
    """A conversation resent with one new message costs one worker call for the new text only."""
    turn1 = ["Hi, I'm Laura Becker, laura.becker@example.net.", "My card is 4111 1111 1111 1111."]
    turn2 = [*turn1, "And my SSN is 536-22-8431."]
    first = await pii_full.analyze(turn1, entities=STRUCTURED, threshold=0.5, timeout_s=T)
    before = pii_full.stats
    second = await pii_full.analyze(turn2, entities=STRUCTURED, threshold=0.5, timeout_s=T)
    after = pii_full.stats
    assert second[:2] == first
    assert (after.cache_hits - before.cache_hits, after.cache_misses - before.cache_misses) == (2, 1)
    assert after.worker_calls - before.worker_calls == 1
    again = await pii_full.analyze(turn2, entities=STRUCTURED, threshold=0.5, timeout_s=T)
    assert again == second and pii_full.stats.worker_calls == after.worker_calls
    # Other parameters are another cache entry.
    await pii_full.analyze(turn1[:1], entities=STRUCTURED, threshold=0.6, timeout_s=T)
    assert pii_full.stats.worker_calls == after.worker_calls + 1


async def test_cache_is_bounded_and_keyed():
    """The LRU keeps at most cache_size entries; keys are HMACs, values hold no text."""
    pool = AnalyzerPool("patterns", workers=1, cache_size=2, cache_key=b"k" * 32)
    await pool.start()
    try:
        texts = [f"ip 10.0.0.{i}" for i in range(3)]
        await pool.analyze(texts, entities=["IP_ADDRESS"], threshold=0.5, timeout_s=T)
        assert len(pool._cache) == 2
        assert all(len(k) == 32 for k in pool._cache)
        assert all(isinstance(f, Finding) for v in pool._cache.values() for f in v)
        calls = pool.stats.worker_calls
        await pool.analyze(texts[1:], entities=["IP_ADDRESS"], threshold=0.5, timeout_s=T)
        assert pool.stats.worker_calls == calls  # the two most recent are still cached
    finally:
        await pool.aclose()


async def test_fault_raise_fails_closed():
    """An analyzer that raises gives PIIUnavailable; the worker stays and serves the next text."""
    pool = AnalyzerPool("patterns", workers=1, fault="raise")
    await pool.start()
    try:
        with pytest.raises(PIIUnavailable, match="RuntimeError"):
            await pool.analyze([f"x {FAULT_TRIGGER}"], entities=["US_SSN"], threshold=0.5, timeout_s=T)
        [found] = await pool.analyze(["ssn 536-22-8431"], entities=["US_SSN"], threshold=0.5, timeout_s=T)
        assert [f.entity for f in found] == ["US_SSN"]
        # A failure is never cached.
        with pytest.raises(PIIUnavailable):
            await pool.analyze([f"x {FAULT_TRIGGER}"], entities=["US_SSN"], threshold=0.5, timeout_s=T)
    finally:
        await pool.aclose()


@pytest.mark.parametrize("fault", ["hang", "crash"])
async def test_fault_hang_or_crash_replaces_worker(fault):
    """A hung (timed-out) or crashed worker gives PIIUnavailable and is replaced: the next request is answered."""
    pool = AnalyzerPool("patterns", workers=1, fault=fault)
    await pool.start()
    try:
        with pytest.raises(PIIUnavailable):
            await pool.analyze([f"x {FAULT_TRIGGER}"], entities=["US_SSN"], threshold=0.5, timeout_s=0.5)
        [found] = await pool.analyze(["ssn 536-22-8431"], entities=["US_SSN"], threshold=0.5, timeout_s=T)
        assert [(f.entity, f.start, f.end) for f in found] == [("US_SSN", 4, 15)]
        assert pool.stats.restarts == 1 and pool.ready
    finally:
        await pool.aclose()


async def test_not_ready_and_load_failure():
    """A pool not started, closed, or whose worker cannot load raises PIIUnavailable."""
    pool = AnalyzerPool("patterns", workers=1)
    assert not pool.ready
    with pytest.raises(PIIUnavailable, match="not ready"):
        await pool.analyze(["ssn 536-22-8431"], entities=["US_SSN"], threshold=0.5, timeout_s=T)
    broken = AnalyzerPool("patterns", workers=1, fault="load")
    with pytest.raises(PIIUnavailable, match="failed to load"):
        await broken.start()
    assert not broken.ready


NO_NETWORK = textwrap.dedent(
    """
    import socket
    attempts = []
    def refuse(*args, **kwargs):
        attempts.append(args[1:] or kwargs)
        raise OSError("network blocked by test")
    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.getaddrinfo = refuse
    from gateway.pii.engine import analyze_texts, build_analyzer, offline_environment
    offline_environment()
    for profile in ("patterns", "full"):
        found = analyze_texts(build_analyzer(profile), ["Email ana.lopez@example.co.uk, ip 10.2.3.4"],
                              ["EMAIL_ADDRESS", "IP_ADDRESS"], 0.5, [])
        assert [f.entity for f in found[0]] == ["EMAIL_ADDRESS", "IP_ADDRESS"], found
    assert attempts == [], attempts
    print("offline ok")
    """
)


def test_no_network_at_load_or_analysis():
    """Both profiles load and analyze (e-mail included: tldextract) with every socket refused."""
    run = subprocess.run([sys.executable, "-c", NO_NETWORK], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "offline ok" in run.stdout
