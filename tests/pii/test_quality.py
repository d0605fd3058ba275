"""Per-entity recall and precision of both profiles on tests/data/pii_eval.jsonl, with floors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.pii.pool import AnalyzerPool
from tests.pii.conftest import STRUCTURED

EVAL = Path(__file__).resolve().parent.parent / "data" / "pii_eval.jsonl"
THRESHOLD = 0.4  # the gateway's default in policies/pii.yaml is expected to match this
FLOORS = {("full", "PERSON"): 0.75} | {(p, e): 0.95 for p in ("full", "patterns") for e in STRUCTURED}


def load() -> list[dict]:
    return [json.loads(line) for line in EVAL.read_text(encoding="utf-8").splitlines() if line]


async def score(pool: AnalyzerPool, entities: tuple[str, ...]) -> dict[str, tuple[float, float, int]]:
    """Lenient matching: a prediction counts when it overlaps a gold span of the same type."""
    rows = load()
    found = await pool.analyze([r["text"] for r in rows], entities=entities, threshold=THRESHOLD, timeout_s=300)
    table = {}
    for entity in entities:
        gold_hit = gold_n = pred_ok = pred_n = 0
        for row, preds in zip(rows, found, strict=True):
            gold = [(s["start"], s["end"]) for s in row["spans"] if s["entity"] == entity]
            mine = [(f.start, f.end) for f in preds if f.entity == entity]
            gold_n += len(gold)
            pred_n += len(mine)
            gold_hit += sum(any(s < e2 and s2 < e for s2, e2 in mine) for s, e in gold)
            pred_ok += sum(any(s < e2 and s2 < e for s2, e2 in gold) for s, e in mine)
        table[entity] = (gold_hit / gold_n if gold_n else 1.0, pred_ok / pred_n if pred_n else 1.0, gold_n)
    return table


@pytest.fixture(scope="module")
async def quality(pii_full, pii_patterns) -> dict[str, dict[str, tuple[float, float, int]]]:
    tables = {
        "full": await score(pii_full, (*STRUCTURED, "PERSON")),
        "patterns": await score(pii_patterns, STRUCTURED),
    }
    print(f"\nPII quality on {EVAL.name}, threshold {THRESHOLD} (recall / precision, lenient overlap)")
    print(f"{'entity':<14} {'n':>4}  {'full':>13}  {'patterns':>13}")
    for entity in (*STRUCTURED, "PERSON"):
        cells = []
        for profile in ("full", "patterns"):
            r = tables[profile].get(entity)
            cells.append(f"{r[0]:.2f} / {r[1]:.2f}" if r else "-")
        print(f"{entity:<14} {tables['full'][entity][2]:>4}  {cells[0]:>13}  {cells[1]:>13}")
    return tables


@pytest.mark.parametrize(("profile", "entity"), sorted(FLOORS))
def test_recall_floor(quality, profile, entity):
    """Recall meets the floor: structured identifiers >= 0.95 in both profiles, PERSON >= 0.75 in full."""
    recall = quality[profile][entity][0]
    assert recall >= FLOORS[profile, entity], f"{profile} {entity} recall {recall:.2f}"
