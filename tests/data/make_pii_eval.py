"""Generate tests/data/pii_eval.jsonl: labelled prompt sentences for PII recall and precision.

Faker (en_US, fixed seed) fills realistic prompt templates with names, e-mails, phones, credit
cards (Luhn-valid: Visa, Mastercard 5- and 2-series, Amex), IBANs (valid mod-97, several
countries), IPv4/IPv6 addresses and US SSNs (Faker's, not textbook samples). Each line is
{"text": ..., "spans": [{"entity", "start", "end"}]} with character offsets.

Run: python tests/data/make_pii_eval.py  (rewrites the file; output is deterministic)
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from faker import Faker

SEED = 20261130
COUNT = 150
OUT = Path(__file__).with_name("pii_eval.jsonl")

TEMPLATES = [
    "Write a polite follow-up email to {PERSON} at {EMAIL_ADDRESS} about the overdue invoice.",
    "Summarize this ticket: customer {PERSON} says the card {CREDIT_CARD} was charged twice.",
    "Can you draft a reply to {PERSON}? Her phone number is {PHONE_NUMBER} if we need to call.",
    "Please translate into Spanish: 'Transfer the deposit to IBAN {IBAN_CODE} before Monday.'",
    "Our firewall blocked {IP_ADDRESS} three times last night; write an incident note.",
    "Fill in the form for {PERSON}, SSN {US_SSN}, and leave the address blank.",
    "Check whether my SSN {US_SSN} is formatted correctly for the W-2.",
    "Rewrite more formally: hey, it's {PERSON}, text me at {PHONE_NUMBER} or mail {EMAIL_ADDRESS}.",
    "The refund should go back to the Mastercard ending in the number {CREDIT_CARD}, right?",
    "Explain why the payment with credit card {CREDIT_CARD} failed for {PERSON}.",
    "Generate a SQL insert for a user named {PERSON} with email {EMAIL_ADDRESS}.",
    "Log line: user={EMAIL_ADDRESS} src={IP_ADDRESS} action=login status=failed. What happened?",
    "My colleague {PERSON} asked me to wire 500 EUR to {IBAN_CODE}. Is this IBAN valid?",
    "Call {PERSON} on {PHONE_NUMBER} to confirm the appointment, then update the CRM.",
    "Draft a letter to the bank: my account {IBAN_CODE} was debited without my consent.",
    "Is {IP_ADDRESS} a private or a public address?",
    "I am {PERSON} and my social security number is {US_SSN}. Help me fill out the loan application.",
    "Book a table for {PERSON} and ask the restaurant to phone {PHONE_NUMBER} with the confirmation.",
    "Pay the supplier with card number {CREDIT_CARD} and send the receipt to {EMAIL_ADDRESS}.",
    "Meeting notes: {PERSON} will contact {PERSON} next week about the server at {IP_ADDRESS}.",
    "Please anonymize this before sharing: name {PERSON}, mobile {PHONE_NUMBER}, SSN {US_SSN}.",
    "Our VPN gateway is {IP_ADDRESS}; can you write a WireGuard config for it?",
    "Remind {PERSON} that the invoice goes to {EMAIL_ADDRESS}, not to the old address.",
    "Which bank issued IBAN {IBAN_CODE}? The beneficiary is {PERSON}.",
    "Thanks {PERSON}! I updated the billing card to {CREDIT_CARD}; the old one expired.",
]

IBAN_LOCALES = ["de_DE", "fr_FR", "nl_NL", "en_GB", "es_ES", "it_IT"]


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    s = iban.replace(" ", "")
    return int("".join(str(int(c, 36)) for c in s[4:] + s[:4])) % 97 == 1


def group(s: str, size: int = 4) -> str:
    return " ".join(s[i : i + size] for i in range(0, len(s), size))


class Values:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.fake = Faker("en_US")
        self.fake.seed_instance(SEED)
        self.ibans = {loc: Faker(loc) for loc in IBAN_LOCALES}
        for i, f in enumerate(self.ibans.values()):
            f.seed_instance(SEED + i + 1)

    def PERSON(self) -> str:
        return f"{self.fake.first_name()} {self.fake.last_name()}"

    def EMAIL_ADDRESS(self) -> str:
        return self.rng.choice([self.fake.email, self.fake.company_email, self.fake.free_email])()

    def PHONE_NUMBER(self) -> str:
        return self.fake.phone_number()

    def CREDIT_CARD(self) -> str:
        kind = self.rng.choice(["visa16", "mastercard", "mastercard", "amex"])
        while True:
            number = self.fake.credit_card_number(kind)
            # Mastercard: Faker mixes 51-55 and 2221-2720 BINs; keep at least half 2-series.
            if kind == "mastercard" and self.rng.random() < 0.5 and not number.startswith("2"):
                continue
            break
        assert luhn_ok(number), number
        if len(number) == 16 and self.rng.random() < 0.5:
            return group(number)
        return number

    def IBAN_CODE(self) -> str:
        iban = self.ibans[self.rng.choice(IBAN_LOCALES)].iban()
        assert iban_ok(iban), iban
        return group(iban) if self.rng.random() < 0.5 else iban

    def IP_ADDRESS(self) -> str:
        return self.fake.ipv6() if self.rng.random() < 0.2 else self.fake.ipv4_public()

    def US_SSN(self) -> str:
        ssn = self.fake.ssn()
        return ssn.replace("-", " ") if self.rng.random() < 0.3 else ssn


def main() -> None:
    rng = random.Random(SEED)
    values = Values(rng)
    lines = []
    for n in range(COUNT):
        template = TEMPLATES[n % len(TEMPLATES)] if n < len(TEMPLATES) else rng.choice(TEMPLATES)
        text, spans, pos = "", [], 0
        for m in re.finditer(r"\{([A-Z_]+)\}", template):
            text += template[pos : m.start()]
            value = getattr(values, m.group(1))()
            spans.append({"entity": m.group(1), "start": len(text), "end": len(text) + len(value)})
            text += value
            pos = m.end()
        text += template[pos:]
        lines.append(json.dumps({"text": text, "spans": spans}, ensure_ascii=False))
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} sentences to {OUT}")


if __name__ == "__main__":
    main()
