"""Outcome uploads: every bad file is refused with its status and line, and nothing is ever half-imported (real
SQLite and PostgreSQL stores)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from benches.bench_ledger import PG_ADMIN, postgres_db
from gateway.errors import Conflict, GatewayError, InvalidRequest, PermissionDenied, UnprocessableRequest
from gateway.fairness import upload
from gateway.fairness.store import DecisionRow, FairnessStore

IDS = [f"{i:032x}" for i in range(1, 41)]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FairnessStore]:
    """A store holding 40 unlabelled decisions (request ids IDS)."""
    if request.param == "sqlite":
        s = FairnessStore(str(tmp_path_factory.mktemp("store") / "fairness.sqlite3"))
        yield from _filled(s)
    else:
        with postgres_db(PG_ADMIN, "gateway_fairness") as url:
            yield from _filled(FairnessStore(url))


def _filled(s: FairnessStore) -> Iterator[FairnessStore]:
    now = time.time()
    s.add_decisions([DecisionRow(r, "audit", "m1" if i < 30 else "m2", "1", i % 2, "a" if i % 3 else "b", now,
                                 now + 86400) for i, r in enumerate(IDS)])  # fmt: skip
    try:
        yield s
    finally:
        s.close()


def csv(*rows: str, header: str = "request_id,outcome") -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


def labelled(s: FairnessStore) -> dict[str, int]:
    with s.db.reading():
        rows = s.db.execute("SELECT request_id, outcome FROM fairness_decisions WHERE outcome IS NOT NULL").fetchall()
    return {str(r): int(o) for r, o in rows}


@pytest.mark.parametrize(
    ("raw", "error", "code", "message"),
    [
        (b"request_id,label\nx,1\n", InvalidRequest, "invalid_csv", "line 1: the header must be exactly"),
        (b"outcome,request_id\n", InvalidRequest, "invalid_csv", "line 1: the header must be exactly"),
        (b"", InvalidRequest, "invalid_csv", "not 'nothing'"),
        (b"request_id,outcome\n", InvalidRequest, "invalid_csv", "a header and no rows"),
        (b"\xff\xfe", InvalidRequest, "invalid_csv", "not UTF-8"),
        (csv(f"{IDS[0]},1", f"{IDS[1]},1,x"), InvalidRequest, "invalid_csv", "line 3: 3 fields, expected 2"),
        (csv(f"{IDS[0]},1", "", f"{IDS[1]},0"), InvalidRequest, "invalid_csv", "line 3: empty line"),
        (csv(f"{IDS[0]},1", f'"{IDS[1]},0'), InvalidRequest, "invalid_csv", "not valid CSV"),
        (csv(f"{IDS[0]},yes"), UnprocessableRequest, "invalid_outcome", "line 2: outcome must be 0 or 1, not 'yes'"),
        (csv(f"{IDS[0]}, 1"), UnprocessableRequest, "invalid_outcome", "line 2: outcome must be 0 or 1"),
        (csv(f"{IDS[0]},2"), UnprocessableRequest, "invalid_outcome", "line 2"),
        (csv("has space,1"), UnprocessableRequest, "invalid_request_id", "line 2: 'has space' is not a request id"),
        (csv(f"{IDS[0]},1", f"{IDS[1]},0", f"{IDS[0]},0"), UnprocessableRequest, "duplicate_request_id",
         f"line 4: request id {IDS[0]} is also on line 2"),
    ],
)  # fmt: skip
def test_bad_files_are_refused_naming_the_line(raw: bytes, error: type[GatewayError], code: str, message: str) -> None:
    """Structure and values: 400 for what is not the format, 422 for values that cannot be outcomes."""
    with pytest.raises(error) as info:
        upload.parse(raw)
    assert type(info.value) is error and info.value.code == code and message in info.value.message


def test_a_good_file_parses_with_a_bom_and_crlf() -> None:
    """Excel's byte-order mark and CRLF line ends are accepted; the digest is of the bytes as sent."""
    raw = b"\xef\xbb\xbfrequest_id,outcome\r\n" + f"{IDS[0]},1\r\n{IDS[1]},0\r\n".encode()
    parsed = upload.parse(raw)
    assert parsed.rows == {IDS[0]: (1, 2), IDS[1]: (0, 3)} and parsed.positives == 1 and parsed.size == len(raw)


def test_a_good_file_is_applied_whole(store: FairnessStore) -> None:
    """Every row is written with the upload's id; the confirmation gets the rows per model before the commit."""
    seen: list[dict[str, int]] = []
    rows = [f"{r},{i % 2}" for i, r in enumerate(IDS[25:35])]
    upload.apply(store, upload.parse(csv(*rows)), "up1", seen.append)
    assert seen == [{"m1": 5, "m2": 5}]
    assert labelled(store) == {r: i % 2 for i, r in enumerate(IDS[25:35])}


@pytest.mark.parametrize(
    ("rows", "error", "code", "message"),
    [
        ([f"{r},1" for r in IDS[:20]] + ["f" * 32 + ",1"] + [f"{r},0" for r in IDS[20:30]], UnprocessableRequest,
         "unknown_request_id", f"line 22: no decision was recorded under request id {'f' * 32}"),
        ([f"{r},1" for r in IDS[:5]] + ["e" * 32 + ",1", "d" * 32 + ",0"], UnprocessableRequest,
         "unknown_request_id", "line 7: no decision was recorded under request id eeee"),
    ],
)  # fmt: skip
def test_unknown_ids_import_nothing(store: FairnessStore, rows: list[str], error: type[GatewayError], code: str,
                                    message: str) -> None:  # fmt: skip
    """A file whose every other line is good imports nothing when one id has no decision; the error counts the
    other such lines."""
    with pytest.raises(error) as info:
        upload.apply(store, upload.parse(csv(*rows)), "up1", lambda _: None)
    assert info.value.code == code and message in info.value.message
    assert labelled(store) == {}
    if len(rows) == 7:
        assert "(1 more such line)" in info.value.message


def test_outcomes_are_final(store: FairnessStore) -> None:
    """A decision that has an outcome cannot get another: 409 naming the line, and the rest of that file is not
    imported either."""
    upload.apply(store, upload.parse(csv(f"{IDS[3]},1")), "up1", lambda _: None)
    with pytest.raises(Conflict) as info:
        upload.apply(store, upload.parse(csv(f"{IDS[4]},0", f"{IDS[3]},0", f"{IDS[5]},1")), "up2", lambda _: None)
    assert info.value.status == 409 and info.value.code == "outcome_already_uploaded"
    assert f"line 3: the decision {IDS[3]} already has an outcome" in info.value.message
    assert labelled(store) == {IDS[3]: 1}


def test_a_refused_confirmation_rolls_everything_back(store: FairnessStore) -> None:
    """When the confirmation fails (no ``label`` permission on a model, or the ledger cannot write) after every
    row was written in the transaction, none of them is committed."""

    def refuse(per_model: dict[str, int]) -> None:
        raise PermissionDenied(f"permission denied: label on model:{sorted(per_model)[-1]}")

    with pytest.raises(PermissionDenied):
        upload.apply(store, upload.parse(csv(*(f"{r},1" for r in IDS[28:32]))), "up1", refuse)
    assert labelled(store) == {}


def test_two_uploads_of_the_same_ids_at_once_one_wins(store: FairnessStore) -> None:
    """Two uploads labelling the same decisions race on two connections: one commits, the other gets 409 and
    writes nothing, on SQLite (the file's write lock) and PostgreSQL (the uploads' advisory lock)."""
    other = FairnessStore(store.url)
    start = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def go(name: str, s: FairnessStore, value: int) -> None:
        parsed = upload.parse(csv(*(f"{r},{value}" for r in IDS[:10])))

        def confirm(_: dict[str, int]) -> None:
            time.sleep(0.05)  # hold the transaction open while the other upload arrives

        start.wait()
        try:
            upload.apply(s, parsed, name, confirm)
            outcomes[name] = "ok"
        except Conflict as exc:
            outcomes[name] = exc.code

    try:
        threads = [threading.Thread(target=go, args=("a", store, 1)), threading.Thread(target=go, args=("b", other, 0))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        other.close()
    assert sorted(map(str, outcomes.values())) == ["ok", "outcome_already_uploaded"]
    winner = next(n for n, o in outcomes.items() if o == "ok")
    assert set(labelled(store).values()) == {1 if winner == "a" else 0} and len(labelled(store)) == 10
