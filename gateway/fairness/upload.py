"""Ground-truth outcomes uploaded as CSV, keyed by request id: checked strictly, then applied all or nothing.

The file is UTF-8 (a byte-order mark is allowed) with exactly the header ``request_id,outcome`` and one row
per decision: the ``x-request-id`` the gateway returned with the decision, and ``1`` or ``0`` for what
happened (1: the outcome a positive decision bets on, such as "repaid"). Every fault is an error naming its
line, and nothing is imported unless the whole file is good:

- 400: not UTF-8, a wrong or missing header, a line with another number of fields, an empty line, no rows;
- 422: an outcome other than 0 or 1, a malformed request id, a request id twice in the file, a request id
  with no recorded decision (never made, not a decision model's, or past its retention);
- 409: a decision that already has an outcome (outcomes are final; nothing is overwritten);
- 413: a file over ``fairness.max_upload_bytes`` (checked by the endpoint while reading).

``apply`` checks the ids and writes the outcomes in one transaction, and the ``fairness.outcomes_uploaded``
ledger entry is made durable before that transaction commits: an upload is in the ledger or did not happen.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gateway.errors import Conflict, InvalidRequest, UnprocessableRequest
from gateway.fairness.store import FairnessStore

HEADER = ["request_id", "outcome"]
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_CHUNK = 500  # request ids per lookup: below SQLite's default limit of 999 parameters
_LOCK = 0x46414952  # PostgreSQL advisory lock serializing uploads (SQLite: the file's write lock)


@dataclass(frozen=True)
class Outcomes:
    """A parsed file: request id -> (outcome, line number), in file order; its SHA-256 and size."""

    rows: dict[str, tuple[int, int]]
    sha256: str
    size: int

    @property
    def positives(self) -> int:
        return sum(outcome for outcome, _ in self.rows.values())


def _more(n: int) -> str:
    return f" ({n} more such line{'s' if n > 1 else ''})" if n else ""


def parse(raw: bytes) -> Outcomes:
    """Check the file and read its rows; InvalidRequest (400) or UnprocessableRequest (422) naming a line."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the file is not UTF-8 text (byte {exc.start})", code="invalid_csv") from None
    lines = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(lines, None)
        if header != HEADER:
            got = "nothing" if header is None else ",".join(header)
            raise InvalidRequest(f"line 1: the header must be exactly {','.join(HEADER)}, not {got[:100]!r}",
                                 code="invalid_csv")  # fmt: skip
        rows: dict[str, tuple[int, int]] = {}
        for fields in lines:
            n = lines.line_num
            if not fields:
                raise InvalidRequest(f"line {n}: empty line", code="invalid_csv")
            if len(fields) != 2:
                raise InvalidRequest(f"line {n}: {len(fields)} fields, expected 2 (request_id,outcome)",
                                     code="invalid_csv")  # fmt: skip
            rid, outcome = fields
            if not _ID.match(rid):
                raise UnprocessableRequest(f"line {n}: {rid[:40]!r} is not a request id", code="invalid_request_id")
            if outcome not in ("0", "1"):
                raise UnprocessableRequest(f"line {n}: outcome must be 0 or 1, not {outcome[:20]!r}",
                                           code="invalid_outcome")  # fmt: skip
            if rid in rows:
                raise UnprocessableRequest(f"line {n}: request id {rid} is also on line {rows[rid][1]}",
                                           code="duplicate_request_id")  # fmt: skip
            rows[rid] = (int(outcome), n)
    except csv.Error as exc:
        raise InvalidRequest(f"line {lines.line_num}: not valid CSV: {exc}", code="invalid_csv") from None
    if not rows:
        raise InvalidRequest("the file has a header and no rows", code="invalid_csv")
    return Outcomes(rows, hashlib.sha256(raw).hexdigest(), len(raw))


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def apply(store: FairnessStore, outcomes: Outcomes, upload_id: str, confirm: Callable[[dict[str, int]], None]) -> None:
    """Write the outcomes, all or none, in one transaction.

    Raises UnprocessableRequest for ids without a decision and Conflict for decisions already labelled
    (each naming the first such line). ``confirm`` is called with the rows per model once every row has been
    checked and written, before the commit: its exception (the ledger entry failed, or a model the uploader
    may not label) rolls everything back.
    """
    db = store.db
    ids = list(outcomes.rows)
    with db.transaction(lock_key=_LOCK):  # two uploads of the same ids: the second sees the first's
        known: dict[str, tuple[str, bool]] = {}
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            for rid, model, labelled in db.execute(
                f"SELECT request_id, model, outcome IS NOT NULL FROM fairness_decisions WHERE request_id IN ({marks})",
                chunk,
            ).fetchall():
                known[str(rid)] = (str(model), bool(labelled))
        unknown = [r for r in ids if r not in known]
        if unknown:
            raise UnprocessableRequest(f"line {outcomes.rows[unknown[0]][1]}: no decision was recorded under request "
                                       f"id {unknown[0]} (or it is past its retention)"
                                       f"{_more(len(unknown) - 1)}", code="unknown_request_id")  # fmt: skip
        done = [r for r in ids if known[r][1]]
        if done:
            raise Conflict(f"line {outcomes.rows[done[0]][1]}: the decision {done[0]} already has an outcome "
                           f"(outcomes are final){_more(len(done) - 1)}", code="outcome_already_uploaded")  # fmt: skip
        db.executemany("UPDATE fairness_decisions SET outcome = ?, upload_id = ? WHERE request_id = ?",
                       [(outcome, upload_id, rid) for rid, (outcome, _) in outcomes.rows.items()])  # fmt: skip
        per_model: dict[str, int] = {}
        for model, _ in known.values():
            per_model[model] = per_model.get(model, 0) + 1
        confirm(per_model)
