"""Shared PII fixtures: one analyzer pool per profile for the whole test session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.pii.pool import AnalyzerPool

STRUCTURED = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN")
"""The structured identifiers both profiles detect."""


@pytest.fixture(scope="session")
async def pii_full() -> AsyncIterator[AnalyzerPool]:
    """The `full` profile (spaCy NER + patterns), started once, two workers."""
    pool = AnalyzerPool("full", workers=2)
    await pool.start()
    yield pool
    await pool.aclose()


@pytest.fixture(scope="session")
async def pii_patterns() -> AsyncIterator[AnalyzerPool]:
    """The `patterns` profile (blank spaCy, pattern and checksum recognizers), started once."""
    pool = AnalyzerPool("patterns", workers=2)
    await pool.start()
    yield pool
    await pool.aclose()
