"""Outcome audits end to end through the real Triton server and a real webhook receiver.

``biased-screener`` approves an applicant when the stated income is at least 50,000, except that it turns down
every applicant named Vesper: the model never sees the group the calling application sends in
``X-Audit-Group``, but the surname is a proxy for it. Applicants who went on to repay are exactly those with
the income, in both groups. The audit must flag equal opportunity (true-positive rates 1 and 0), show each
group's accuracy, fail the accuracy drop against the policy's baseline, raise the fairness alert (ledger entry,
log line, webhook), and serve its result over the API with the model version; the outcome upload refuses bad
files whole.
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from backends.local.launcher import LocalTriton
from gateway.fairness.store import FairnessStore, fairness_url
from gateway.settings import Settings
from ledger.store import open_store
from tests.conftest import POLICIES, create_app, in_process, make_settings, new_key, wait_for
from tests.gateway.observability.test_alerts import receiver  # noqa: F401 - a fixture

pytestmark = pytest.mark.triton

CHAT = "/v1/chat/completions"
HIGH = ["72,000", "58,500", "51,000", "95,000", "63,000", "80,500", "55,000", "67,000", "99,000", "52,500"]
LOW = ["49,000", "38,000", "22,000", "41,500"]
NAMES = {"north": ["Aldo Brandt", "Cora Lind"], "south": ["Ilse Vesper", "Tomas Vesper"]}
AUDIT: dict[str, Any] = {
    "kind": "outcome",
    "name": "screener-outcomes",
    "description": "biased-screener's decisions against what became of the loans",
    "models": ["biased-screener"],
    "prediction": {"kind": "yes_no"},
    "attribute": {"name": "region", "header": "X-Audit-Group", "groups": ["north", "south"]},
    "thresholds": {"min_group_size": 10, "max_unread_share": 0.2, "accuracy_baseline": 0.9},
    "statistics": {"resamples": 200},
}


def policy_folder(tmp_path: Path) -> Path:
    """The shipped policy, plus: the test outcome audit; a service role that may use biased-screener, with names
    reaching it (the surname is the proxy under test); an uploader allowed to label only credit-* models; and the
    fairness alert alone in alerts.yaml."""
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    (folder / "fairness" / "screener_outcomes.yaml").write_text(yaml.safe_dump(AUDIT, sort_keys=False))
    with (folder / "policy.csv").open("a") as f:
        f.write("p, role:service, model:biased-screener, infer, allow\n"
                "p, role:narrow-uploader, route:/admin/fairness/outcomes, label, allow\n"
                "p, role:narrow-uploader, model:credit-*, label, allow\n")  # fmt: skip
    pii = yaml.safe_load((folder / "pii.yaml").read_text())
    pii["overrides"].append({"roles": ["service"], "models": ["biased-screener"], "entities": {"PERSON": "allow"}})
    (folder / "pii.yaml").write_text(yaml.safe_dump(pii))
    rules = yaml.safe_load((folder / "alerts.yaml").read_text())["rules"]
    fairness = [r for r in rules if r["name"] == "FairnessThresholdBreached"]
    (folder / "alerts.yaml").write_text(yaml.safe_dump({"rules": fairness}))
    return folder


def ask(name: str, income: str) -> dict[str, Any]:
    prompt = f"Applicant {name} reports an annual income of ${income}. Approve? Answer yes or no."
    return {"model": "biased-screener", "messages": [{"role": "user", "content": prompt}], "max_tokens": 8}


def entries(settings: Settings) -> list[dict[str, Any]]:
    store = open_store(settings.ledger_store())
    try:
        return [orjson.loads(b) for log in store.logs() for _, _, b in store.read(log)]
    finally:
        store.close()


def upload(rows: list[tuple[str, int]], header: str = "request_id,outcome") -> bytes:
    out = io.StringIO()
    out.write(header + "\n")
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode()


def labelled(settings: Settings) -> int:
    store = FairnessStore(fairness_url(settings.ledger_store()))
    try:
        with store.db.reading():
            return int(store.db.execute("SELECT COUNT(*) FROM fairness_decisions WHERE outcome IS NOT NULL")
                       .fetchone()[0])  # fmt: skip
    finally:
        store.close()


async def decide(c: httpx.AsyncClient) -> dict[str, int]:
    """Every applicant of both groups (10 with the income, 4 without, 1 undisclosed each); request id -> truth."""
    truth: dict[str, int] = {}
    for group, names in NAMES.items():
        for i, income in enumerate([*HIGH, *LOW, "undisclosed"]):
            r = await c.post(CHAT, json=ask(names[i % 2], income), headers={"X-Audit-Group": group})
            assert r.status_code == 200, r.text
            truth[r.headers["x-request-id"]] = int(income in HIGH)
    return truth


async def test_outcome_audit_flags_the_proxy_discrimination(triton: LocalTriton, tmp_path: Path,
                                                            receiver: Any) -> None:  # fmt: skip  # noqa: F811
    """Decisions recorded with their group, outcomes uploaded (bad files refused whole first), the audit run: equal
    opportunity fails with rates 1 and 0, per-group accuracy 1 and 4/14, the accuracy drop fails, the alert fires
    once (ledger, webhook), and the result is served to auditors only, with model version 1."""
    url, bodies, _ = receiver
    settings = make_settings(triton, tmp_path, policy={"dir": policy_folder(tmp_path), "watch": False},
                             fairness={"scheduler": False, "max_upload_bytes": 4096},
                             alerts={"interval_s": 0.2, "webhook_url": url, "webhook_backoff_s": 0.05})  # fmt: skip
    app = create_app(settings)
    uploader, narrow = new_key(settings, "outcome-uploader"), new_key(settings, "narrow-uploader")
    auditor, analyst = new_key(settings, "auditor"), new_key(settings, "analyst")
    async with in_process(app, new_key(settings, "service", owner="lending-app")) as c:
        missing = await c.post(CHAT, json=ask("Aldo Brandt", "72,000"))
        wrong = await c.post(CHAT, json=ask("Aldo Brandt", "72,000"), headers={"X-Audit-Group": "Atlantis"})
        assert (missing.status_code, missing.json()["error"]["code"]) == (400, "audit_attribute_missing")
        assert (wrong.status_code, wrong.json()["error"]["code"]) == (400, "audit_attribute_invalid")
        assert "Atlantis" not in wrong.text and wrong.json()["error"]["param"] == "X-Audit-Group"
        truth = await decide(c)
        good = upload(sorted(truth.items()))

        def post(body: bytes, key: str = uploader, ctype: str = "text/csv") -> Any:
            return c.post("/admin/fairness/outcomes", content=body,
                          headers={"authorization": f"Bearer {key}", "content-type": ctype})  # fmt: skip

        rows = sorted(truth.items())
        refused = {
            "header": await post(upload(rows, header="id,outcome")),
            "value": await post(upload([*rows[:5], (rows[5][0], 2), *rows[6:]])),
            "duplicate": await post(upload([*rows, rows[3]])),
            "unknown": await post(upload([*rows[:20], ("0" * 32, 1), *rows[20:]])),
            "type": await post(good, ctype="application/json"),
            "size": await post(good + b"".join(f"{i:032x},1\n".encode() for i in range(200))),
            "permission": await post(good, key=narrow),
            "role": await post(good, key=auditor),
        }
        got = {k: (r.status_code, r.json()["error"]["code"]) for k, r in refused.items()}
        assert got == {"header": (400, "invalid_csv"), "value": (422, "invalid_outcome"),
                       "duplicate": (422, "duplicate_request_id"), "unknown": (422, "unknown_request_id"),
                       "type": (415, "unsupported_media_type"), "size": (413, "request_too_large"),
                       "permission": (403, "permission_denied"), "role": (403, "permission_denied")}  # fmt: skip
        assert refused["unknown"].json()["error"]["message"].startswith("line 22: ")
        assert refused["duplicate"].json()["error"]["message"].startswith(f"line {len(rows) + 2}: ")
        assert labelled(settings) == 0  # nothing half-imported

        ok = await post(good)
        assert ok.status_code == 200, ok.text
        assert (
            ok.json()["rows"] == 30 and ok.json()["positives"] == 20 and ok.json()["models"] == {"biased-screener": 30}
        )
        again = await post(upload(rows[:1]))
        assert (again.status_code, again.json()["error"]["code"]) == (409, "outcome_already_uploaded")

        (report,) = await app.state.gateway.fairness.run("screener-outcomes", requested_by="test")
        await wait_for(lambda: len(bodies) >= 1, 30, "the fairness alert's webhook message")

        listed = (await c.get("/admin/fairness/audits", headers={"authorization": f"Bearer {auditor}"})).json()
        one = await c.get(f"/admin/fairness/audits/{report.audit_id}", headers={"authorization": f"Bearer {auditor}"})
        nope = await c.get(f"/admin/fairness/audits/{'0' * 32}", headers={"authorization": f"Bearer {auditor}"})
        denied = [(await c.get("/admin/fairness/audits", headers={"authorization": f"Bearer {k}"})).status_code
                  for k in (analyst, uploader)]  # fmt: skip
        bad = {q: (await c.get(f"/admin/fairness/audits?{q}", headers={"authorization": f"Bearer {auditor}"}))
               for q in ("limit=0", "kind=other", "after=x", "sort=name", "model=a&model=b")}  # fmt: skip
        filtered = {q: (await c.get(f"/admin/fairness/audits?{q}", headers={"authorization": f"Bearer {auditor}"}))
                    .json()["data"] for q in ("kind=probe", "model=biased-screener&kind=outcome")}  # fmt: skip

    assert report.status == "fail" and report.version == "1" and report.attribute == "region"
    checks = {ch.metric: ch for ch in report.checks}
    assert checks["equal_opportunity_difference"].status == "fail" and checks["equal_opportunity_difference"].value == 1
    assert checks["accuracy_drop"].status == "fail" and checks["unread_share"].status == "pass"
    assert report.metrics is not None and report.reference is not None
    by_group = {g.group: g for g in report.metrics.groups}
    assert by_group["north"].true_positive_rate.value == 1 and by_group["south"].true_positive_rate.value == 0
    assert by_group["north"].accuracy.value == 1 and by_group["south"].accuracy.value == pytest.approx(4 / 14)
    assert report.reference.equal_opportunity_difference == pytest.approx(1, abs=1e-12)  # fairlearn agrees
    assert report.accuracy is not None and report.accuracy.value == pytest.approx(18 / 28)
    assert report.baseline == {"accuracy": 0.9, "source": "policy"}
    assert [(c.group, c.recorded, c.labelled, c.unreadable) for c in report.coverage] == [
        ("north", 15, 15, 1), ("south", 15, 15, 1)]  # fmt: skip

    assert listed["data"][0]["id"] == report.audit_id and listed["data"][0]["version"] == "1"
    assert listed["data"][0]["kind"] == "outcome" and listed["data"][0]["status"] == "fail"
    assert one.status_code == 200 and one.json()["result"]["checks"][2]["metric"] == "equal_opportunity_difference"
    assert (nope.status_code, nope.json()["error"]["code"]) == (404, "audit_not_found")
    assert denied == [403, 403]
    assert {q: (r.status_code, r.json()["error"]["param"]) for q, r in bad.items()} == {
        "limit=0": (400, "limit"), "kind=other": (400, "kind"), "after=x": (400, "after"), "sort=name": (400, "sort"),
        "model=a&model=b": (400, None)}  # fmt: skip
    assert filtered["kind=probe"] == [] and [a["id"] for a in filtered["model=biased-screener&kind=outcome"]] == [
        report.audit_id]  # fmt: skip

    alert = bodies[0]["alerts"][0]
    assert alert["labels"]["alertname"] == "FairnessThresholdBreached" and alert["labels"]["model"] == "biased-screener"
    assert alert["labels"]["audit"] == "screener-outcomes" and alert["labels"]["version"] == "1"
    log = entries(settings)
    kinds = [e["kind"] for e in log]
    (uploaded,) = [e for e in log if e["kind"] == "fairness.outcomes_uploaded"]
    assert uploaded["actor"].startswith("apikey:") and uploaded["data"]["sha256"] == hashlib.sha256(good).hexdigest()
    assert uploaded["data"]["rows"] == 30 and uploaded["data"]["models"] == {"biased-screener": 30}
    (audited,) = [e for e in log if e["kind"] == "fairness.audit"]
    assert audited["data"]["kind"] == "outcome" and audited["data"]["version"] == "1"
    assert audited["data"]["digest"] == hashlib.sha256(
        (settings.policy.dir / "fairness" / "screener_outcomes.yaml").read_bytes()).hexdigest()  # fmt: skip
    assert audited["data"]["status"] == "fail" and audited["seq"] == report.seq
    assert kinds.count("fairness.started") == 1 and kinds.count("alert.fired") == 1
    (fired,) = [e for e in log if e["kind"] == "alert.fired"]
    assert fired["data"]["alert"] == "FairnessThresholdBreached" and fired["data"]["value"] >= 1
    # the label of a decision never reaches the ledger, and no prompt reaches the decision records
    assert not any("north" in orjson.dumps(e["data"]).decode() for e in log if e["kind"].startswith("request."))
    raw = b"".join(p.read_bytes() for p in settings.ledger_dir().glob("fairness.sqlite3*"))
    assert b"Vesper" not in raw and b"income" not in raw
