"""``GET /admin/stats`` and ``gateway stats export`` end to end: real traffic through the gateway, plus older
synthetic days in a second log of the same ledger store (as another replica would write them)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from starlette.routing import Route

from benches._synthetic_ledger import Traffic, write
from gateway.cli import main
from ledger.store import open_store
from tests.conftest import POLICIES, create_app, make_settings, new_key

TODAY = datetime.now(UTC).date()
DAYS = 10
PER_DAY = {d: 3 * (d + 1) for d in range(DAYS)}  # day index (0 = DAYS-1 days ago) -> requests by 3 callers
CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


def _past_traffic(store_url: str) -> dict[str, int]:
    """Synthetic requests on the DAYS days up to yesterday; the true count per day (always under K)."""
    t, events, truth = Traffic(), [], {}
    for d, n in PER_DAY.items():
        day = TODAY - timedelta(days=DAYS - d)
        at = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
        truth[day.isoformat()] = n
        for i in range(n):
            events += t.request(at + timedelta(seconds=i), f"user:past{i % 3}", model="echo")
    write(store_url, "replica-b.example/log", events)
    return truth


@pytest.fixture
async def gw(triton, tmp_path: Path):
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    with (folder / "policy.csv").open("a") as f:
        f.write("p, role:user, model:echo*, infer, allow\n")
    settings = make_settings(triton, tmp_path, policy={"dir": folder, "watch": False})
    truth = _past_traffic(settings.ledger_store())
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app, settings, truth


def _client(app: Any, key: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://gw", headers={"authorization": f"Bearer {key}"})


def _range(days: int = DAYS) -> dict[str, str]:
    return {"from": (TODAY - timedelta(days=days)).isoformat(), "to": TODAY.isoformat()}


async def test_analysts_get_noisy_statistics_with_their_privacy_parameters(gw) -> None:
    app, settings, _ = gw
    async with _client(app, new_key(settings, "user", owner="carol")) as user:
        for _ in range(4):
            assert (await user.post("/v1/chat/completions", json=CHAT)).status_code == 200
        r = await user.get("/admin/stats", params={"metric": "requests", **_range()})
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    async with _client(app, new_key(settings, "analyst", owner="ana")) as analyst:
        r = await analyst.get("/admin/stats", params={"metric": "requests", "group_by": "day,model", **_range()})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "stats.release" and body["cached"] is False
        p = body["privacy"]
        assert (p["unit"], p["epsilon"], p["delta"], p["mechanism"]) == ("caller", 0.5, 0.0,
                                                                          "discrete_laplace(histogram)")  # fmt: skip
        assert p["sensitivity"] == 20 * (DAYS + 1) and p["bounds"]["requests_per_unit_per_day"] == 20
        assert p["accuracy"]["confidence"] == 0.95 and p["accuracy"]["half_width"] > 0
        models = {m.name for m in settings.models}
        assert {g["model"] for g in body["groups"]} == models | {"(other)"}
        assert len({g["day"] for g in body["groups"]}) == DAYS + 1
        assert body["budget"]["remaining"] == {"epsilon": 2.5, "delta": 1e-6}
        again = (await analyst.get("/admin/stats", params={"metric": "requests", "group_by": "day,model",
                                                           **_range()})).json()  # fmt: skip
        assert again["cached"] is True and again["groups"] == body["groups"]
        assert again["budget"]["remaining"] == {"epsilon": 2.5, "delta": 1e-6}
    store = open_store(settings.ledger_store())
    try:
        entries = [json.loads(b) for log in store.logs() for _, _, b in store.read(log)]
    finally:
        store.close()
    released = [e for e in entries if e["kind"] == "stats.released"]
    assert len(released) == 1 and released[0]["actor"].startswith("apikey:")
    assert released[0]["data"]["epsilon"] == 0.5 and isinstance(released[0]["data"]["groups"], int)
    assert "value" not in json.dumps(released[0]["data"])


async def test_bad_queries_get_openai_errors_and_spend_nothing(gw) -> None:
    app, settings, _ = gw
    async with _client(app, new_key(settings, "analyst", owner="ana")) as analyst:
        for params, param in [({"metric": "nope"}, "metric"), ({"metric": "requests", "group_by": "user"}, "group_by"),
                              ({"metric": "requests", "exact": "true"}, "exact"),
                              ({"metric": "requests", "epsilon": "3"}, "epsilon")]:  # fmt: skip
            r = await analyst.get("/admin/stats", params={**_range(), **params})
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]
        r = await analyst.get("/admin/stats?metric=requests&metric=errors&" + "&".join(
            f"{k}={v}" for k, v in _range().items()))  # fmt: skip
        assert r.status_code == 400
        r = await analyst.get("/admin/stats", params={"metric": "errors", **_range()})
        assert r.json()["budget"]["remaining"]["epsilon"] == 2.5  # only this one spent


async def test_overspending_gets_429_with_the_remaining_budget(gw) -> None:
    app, settings, _ = gw
    async with _client(app, new_key(settings, "analyst", owner="ana")) as analyst:
        for days in range(6):  # 3.0 a month at 0.5 a query
            r = await analyst.get("/admin/stats", params={"metric": "requests", **_range(days)})
            assert r.status_code == 200, r.text
        r = await analyst.get("/admin/stats", params={"metric": "requests", **_range(7)})
        assert r.status_code == 429
        err = r.json()["error"]
        assert err["code"] == "privacy_budget_exhausted" and err["remaining_budget"]["epsilon"] == 0.0
        assert "remaining this period: epsilon=0" in err["message"] and int(r.headers["retry-after"]) > 0
        r = await analyst.get("/admin/stats", params={"metric": "requests", **_range(2)})
        assert r.status_code == 200 and r.json()["cached"] is True  # answered before: still available


async def test_no_endpoint_gives_a_noisy_only_role_an_exact_statistic(gw) -> None:
    """Every GET endpoint an analyst can reach is called. Only /admin/stats answers with statistics, and its
    per-day counts are not the true ones: with scale 20 * 11 / 0.5 = 440, a value equals its (known, non-zero)
    truth with probability < 1/880, so all ten doing so by chance has probability < 1e-29."""
    app, settings, truth = gw
    analyst_key = new_key(settings, "analyst", owner="ana")
    reachable = {}
    async with _client(app, analyst_key) as analyst:
        for route in app.routes:
            if not isinstance(route, Route) or "GET" not in (route.methods or ()):
                continue
            path = route.path.replace("{model:path}", "echo").replace("{seq}", "0")
            r = await analyst.get(path, params={"metric": "requests", "group_by": "day", **_range()})
            if r.status_code == 200:
                html = r.headers["content-type"].startswith("text/html")
                reachable[route.path] = {"page": r.text} if html else r.json()
        # The compliance page, signed in as the analyst (a cookie, not the bearer header): no ledger sizes.
        assert (await analyst.post("/admin/ui/login", data={"api_key": analyst_key})).status_code == 303
        page = await analyst.get("/admin/ui", headers={"authorization": ""})
        assert page.status_code == 200 and "Your roles do not include the ledger's status" in page.text
        assert "Entries" not in page.text and "tree size" not in page.text
        reachable["/admin/ui"] = {"page": page.text}
    # Reviewed: none of these carries a statistic. A new endpoint an analyst can reach fails here until reviewed.
    # /admin/reports lists report statuses and /admin/reports/key the signing key; a report's own numbers about
    # traffic come from /admin/stats's release path (tests/reports). /readyz has flags and a lag in seconds only.
    # The page's login form and the page itself (above) show no ledger size to an analyst.
    without_statistics = {"/healthz", "/readyz", "/v1/models", "/v1/models/{model:path}", "/admin/reports",
                          "/admin/reports/key", "/admin/ui/login", "/admin/ui"}  # fmt: skip
    assert "/admin/stats" in reachable and set(reachable) <= without_statistics | {"/admin/stats"}, set(reachable)
    released = {g["day"]: g["value"] for g in reachable["/admin/stats"]["groups"]}
    assert sum(released[day] == n for day, n in truth.items()) < len(truth)
    assert reachable["/admin/stats"]["privacy"]["epsilon"] > 0
    for path, body in reachable.items():
        if path != "/admin/stats":
            numbers = _numbers(body)
            assert not set(numbers) & set(truth.values()) - {0, 1}, (path, numbers)


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


def test_stats_export_writes_csv_and_json_through_a_running_gateway(live, tmp_path: Path) -> None:
    server = live()
    _past_traffic(server.settings.ledger_store())
    key = new_key(server.settings, "analyst", owner="exporter")
    span = _range()
    args = ["stats", "export", "--url", server.url, "--ca-file", str(server.ca_file), "--api-key", key,
            "--metric", "requests", "--group-by", "day", "--from", span["from"], "--to", span["to"]]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == DAYS + 1 and rows[0]["epsilon"] == "0.5" and rows[0]["mechanism"].startswith("discrete")
    assert "spent now" in result.stderr
    out = tmp_path / "release.json"
    result = CliRunner().invoke(main, [*args, "--format", "json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    answer = json.loads(out.read_text())
    assert answer["cached"] is True and [float(r["value"]) for r in rows] == [g["value"] for g in answer["groups"]]
    bad = CliRunner().invoke(main, [*args[:-6], "--metric", "salaries", "--from", "2026-01-01", "--to", "2026-01-02"])
    assert bad.exit_code == 1 and "400: metric must be one of" in bad.output
    user = CliRunner().invoke(main, [*args[:6], "--api-key", new_key(server.settings, "user"), *args[8:]])
    assert user.exit_code == 1 and "403: permission denied: report on route:/admin/stats" in user.output


async def test_the_fact_index_keeps_up_in_the_background(triton, tmp_path: Path) -> None:
    """With stats.index_interval_s set, facts follow the ledger without any release asking."""
    from tests.conftest import wait_for

    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    with (folder / "policy.csv").open("a") as f:
        f.write("p, role:user, model:echo*, infer, allow\n")
    settings = make_settings(triton, tmp_path, policy={"dir": folder, "watch": False},
                             stats={"index_interval_s": 0.1})  # fmt: skip
    app = create_app(settings)
    async with app.router.lifespan_context(app), _client(app, new_key(settings, "user", owner="dan")) as user:
        assert (await user.post("/v1/chat/completions", json=CHAT)).status_code == 200
        index = app.state.gateway.stats.index

        def indexed() -> bool:
            rows = index.rows("SELECT unit, outcome FROM dp_facts WHERE kind = 'request'", ())
            return rows == [("dan", "ok")]

        await wait_for(indexed, 30, "the background indexer to index the request and its completion")
