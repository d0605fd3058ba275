"""Compliance reports as background jobs: requested, generated on the event loop's side (heavy parts in worker
threads), signed, written to the ledger, then offered for download.

Reports and their three files live in the table ``reports`` beside the ledger (``reports.sqlite3``, or the
ledger's PostgreSQL database, so that replicas share them). A job's status is ``pending``, ``running``,
``done`` or ``failed`` (with ``error``). A report is ``done`` only once its ``report.created`` ledger entry is
durable. A replica makes one report at a time; the others wait, ``pending``. A job that a stopped gateway
left ``pending`` or ``running`` is marked ``failed`` ("interrupted") by the same replica when it starts again:
requesting it anew is cheap, and the DP releases it made come from the answer cache, spending nothing twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

import orjson

import gateway
from gateway.audit import AuditSink
from gateway.db import Database, beside_ledger
from gateway.errors import ConfigError, GatewayError, InvalidRequest, RateLimited
from gateway.fairness.store import FairnessStore
from gateway.identity.principal import Principal
from gateway.observability.tracing import with_trace_id
from gateway.reports.collect import FORMAT, Release, Sources, collect
from gateway.reports.controls import SECTIONS, ControlsError, load_controls
from gateway.reports.render_csv import render_csv
from gateway.reports.render_pdf import render_pdf
from gateway.reports.sign import ReportSigner, report_digest
from gateway.settings import Settings
from gateway.timefmt import iso
from ledger.keyfile import KeyFileError
from ledger.verifier import AnchorSource

log = logging.getLogger(__name__)

StatsRelease = Callable[[Principal, frozenset[str], Mapping[str, str]], Awaitable[dict[str, Any]]]
"""``StatsService.release``: every number a report gives about callers' traffic goes through it."""
Format = Literal["json", "csv", "pdf"]
MEDIA: dict[str, str] = {"json": "application/json", "csv": "text/csv; charset=utf-8", "pdf": "application/pdf"}

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS reports (id TEXT PRIMARY KEY, status TEXT NOT NULL, period_from TEXT NOT NULL,"
    " period_to TEXT NOT NULL, sections TEXT NOT NULL, requested_by TEXT NOT NULL, replica TEXT NOT NULL,"
    " created_at DOUBLE PRECISION NOT NULL, finished_at DOUBLE PRECISION, progress TEXT, error TEXT,"
    " report_sha256 TEXT, pdf_sha256 TEXT, csv_sha256 TEXT, ledger_log TEXT, ledger_seq BIGINT)",
    "CREATE TABLE IF NOT EXISTS report_files (id TEXT NOT NULL, format TEXT NOT NULL, sha256 TEXT NOT NULL,"
    " content {blob} NOT NULL, PRIMARY KEY (id, format))",
)
_COLUMNS = ("id, status, period_from, period_to, sections, requested_by, created_at, finished_at, progress, error,"
            " report_sha256, pdf_sha256, csv_sha256, ledger_log, ledger_seq")  # fmt: skip


def _view(row: Any) -> dict[str, Any]:
    r = list(row)
    done = r[1] == "done"
    return {
        "id": r[0], "object": "report", "status": r[1], "period": {"from": r[2], "to": r[3]},
        "sections": r[4].split(","), "requested_by": r[5], "created_at": iso(r[6]),
        "finished_at": None if r[7] is None else iso(r[7]),
        "progress": r[8], "error": r[9],
        "digests": {"report_sha256": r[10], "pdf_sha256": r[11], "csv_sha256": r[12]} if done else None,
        "ledger": {"log": r[13], "seq": r[14]} if done else None,
        "files": {f: f"/admin/reports/{r[0]}.{f}" for f in ("json", "csv", "pdf")} if done else None,
    }  # fmt: skip


@dataclass(frozen=True)
class ReportRequest:
    """A checked request for a report."""

    start: date
    end: date
    sections: tuple[str, ...]

    @classmethod
    def parse(cls, body: Any, max_days: int, today: date) -> ReportRequest:
        """From ``{"period": {"from", "to"}, "sections": [...]}``; ``InvalidRequest`` names the bad member."""
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object")
        unknown = sorted(set(body) - {"period", "sections"})
        if unknown:
            raise InvalidRequest(f"unknown member {unknown[0]!r}", param=unknown[0])
        period = body.get("period")
        if not isinstance(period, dict) or set(period) != {"from", "to"}:
            raise InvalidRequest('period must be {"from": "YYYY-MM-DD", "to": "YYYY-MM-DD"}', param="period")
        days = []
        for name in ("from", "to"):
            try:
                days.append(date.fromisoformat(str(period[name])))
            except ValueError:
                raise InvalidRequest(f"period.{name} must be a UTC date such as 2026-11-01",
                                     param=f"period.{name}") from None  # fmt: skip
        start, end = days
        if end < start:
            raise InvalidRequest(f"period.to ({end}) is before period.from ({start})", param="period.to")
        if end > today:
            raise InvalidRequest(f"period.to ({end}) is in the future (today is {today} UTC)", param="period.to")
        if (end - start).days + 1 > max_days:
            raise InvalidRequest(f"a report covers at most {max_days} days (reports.max_days)", param="period")
        sections = body.get("sections", list(SECTIONS))
        if not isinstance(sections, list) or not sections or not all(s in SECTIONS for s in sections):
            raise InvalidRequest(f"sections must be a non-empty list of {', '.join(SECTIONS)}", param="sections")
        return cls(start, end, tuple(s for s in SECTIONS if s in sections))


def report_signer(settings: Settings) -> ReportSigner:
    """The report key's signer (made at the first start); ``ConfigError`` for a key file others can read."""
    try:
        return ReportSigner(settings.reports.signing_key or settings.reports_dir() / "report.key")
    except KeyFileError as exc:
        raise ConfigError(f"reports.signing_key: {exc}") from None


class ReportService:
    def __init__(self, settings: Settings, audit: AuditSink, origin: str, verifier_key: str,
                 fairness: FairnessStore, policy_status: Callable[[], dict[str, Any]],
                 release: StatsRelease, signer: ReportSigner,
                 chain: Callable[[], AnchorSource | None] = lambda: None) -> None:  # fmt: skip
        """``chain`` gives the anchorer's chain connection when it has one (the integrity section then checks
        the anchors on the chain)."""
        self.settings = settings
        self._chain = chain
        self._release = release
        self._one_at_a_time = asyncio.Semaphore(1)
        """A report verifies the whole log and scans the period in a worker thread: one at a time per replica,
        so that several requests cannot take every core from the traffic (the others wait, ``pending``)."""
        self._progress: dict[str, str] = {}
        """The step each job of this process is at (kept in memory: a step is not worth a write)."""
        self._audit = audit
        self._origin = origin
        self._verifier_key = verifier_key
        self._fairness = fairness
        self._policy_status = policy_status
        self.signer = signer
        self._db = Database(beside_ledger(settings.ledger_store(), "reports.sqlite3"), SCHEMA)
        self._tasks: set[asyncio.Task[None]] = set()
        with self._db.transaction():
            self._db.execute("UPDATE reports SET status = 'failed', error = ?, finished_at = ? WHERE replica = ? "
                             "AND status IN ('pending', 'running')",
                             ("interrupted: the gateway stopped while generating it", time.time(), origin))  # fmt: skip

    async def aclose(self) -> None:
        """Stop the jobs in progress (each is marked failed) and close the table."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._db.close()

    async def create(self, principal: Principal, roles: frozenset[str], body: Any) -> dict[str, Any]:
        """Queue a report; its status row. The job runs in the background (``release`` binds the requester)."""
        req = ReportRequest.parse(body, self.settings.reports.max_days, datetime.now(UTC).date())
        queued = await asyncio.to_thread(self._queued, principal.subject)
        if queued >= self.settings.reports.max_queued:
            await self._audit.commit("report.refused", principal.subject, with_trace_id(
                {"reason": "too_many_reports", "queued": queued}))  # fmt: skip
            raise RateLimited(f"you have {queued} reports queued or running (reports.max_queued); ask again when "
                              "one is done", retry_after_s=10, code="too_many_reports")  # fmt: skip
        rid = uuid.uuid4().hex
        row = (rid, "pending", req.start.isoformat(), req.end.isoformat(), ",".join(req.sections), principal.subject,
               self._origin, time.time(), "queued")  # fmt: skip
        await asyncio.to_thread(self._insert, row)

        release = self._release_for(principal, roles)
        task = asyncio.create_task(self._run(rid, principal.subject, req, release), name=f"report-{rid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        found = await self.get(rid)
        assert found is not None
        return found

    def _release_for(self, principal: Principal, roles: frozenset[str]) -> Release:
        path = self._release

        async def release(params: dict[str, str]) -> dict[str, Any]:
            return await path(principal, roles, params)

        return release

    def _queued(self, subject: str) -> int:
        with self._db.reading():
            (n,) = self._db.execute("SELECT count(*) FROM reports WHERE requested_by = ? AND status IN "
                                    "('pending', 'running')", (subject,)).fetchone()  # fmt: skip
        return int(n)

    def _insert(self, row: tuple[Any, ...]) -> None:
        with self._db.transaction():
            self._db.execute("INSERT INTO reports (id, status, period_from, period_to, sections, requested_by, "
                             "replica, created_at, progress) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)  # fmt: skip

    def _update(self, rid: str, **values: Any) -> None:
        names = sorted(values)
        with self._db.transaction():
            self._db.execute(f"UPDATE reports SET {', '.join(f'{n} = ?' for n in names)} WHERE id = ?",
                             (*(values[n] for n in names), rid))  # fmt: skip

    async def _run(self, rid: str, requested_by: str, req: ReportRequest, release: Release) -> None:
        def progress(step: str) -> None:  # from worker threads too: one dict item, set atomically
            self._progress[rid] = step

        self._progress[rid] = "waiting for the report before it"
        try:
            async with self._one_at_a_time:
                self._progress[rid] = "starting"
                await asyncio.to_thread(self._update, rid, status="running")
                await self._generate(rid, requested_by, req, release, progress)
        except asyncio.CancelledError:
            await asyncio.to_thread(self._update, rid, status="failed", error="interrupted: the gateway stopped",
                                    finished_at=time.time())  # fmt: skip
            raise
        except Exception as exc:
            log.exception("report %s failed", rid)
            # a caller sees the messages written for callers (and the controls file's); anything else stays in the log
            known = isinstance(exc, GatewayError | ControlsError)
            reason = str(exc) if known else f"internal error ({type(exc).__name__}); see the gateway log for {rid}"
            await asyncio.to_thread(self._update, rid, status="failed", error=reason[:500], finished_at=time.time())
        finally:
            self._progress.pop(rid, None)

    async def _generate(self, rid: str, requested_by: str, req: ReportRequest, release: Release,
                        progress: Callable[[str], None]) -> None:  # fmt: skip
        controls = await asyncio.to_thread(load_controls, self.settings.policy.dir / "controls.yaml")
        src = Sources(self.settings, self._origin, self._verifier_key, self._fairness, self._policy_status, release,
                      self._chain())  # fmt: skip
        sections, entries = await collect(src, controls, req.start, req.end, req.sections, progress)
        body: dict[str, Any] = {
            "format": FORMAT, "id": rid, "period": {"from": req.start.isoformat(), "to": req.end.isoformat()},
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"), "requested_by": requested_by,
            "gateway": sections.get("inventory", {}).get("gateway") or {"origin": self._origin},
            "sections_requested": list(req.sections), "empty": False, "summary": {},
            "sections": sections,
            "controls": [{**c.model_dump(mode="json"), "sections": [s for s in c.sections if s in sections],
                          "evidence_missing": [s for s in c.sections if s not in sections]}
                         for c in controls.controls],
        }  # fmt: skip
        body["gateway"].setdefault("version", gateway.__version__)
        body["empty"], body["summary"] = await asyncio.to_thread(_summary, sections, entries)
        progress("rendering")
        csv_bytes = render_csv(body)
        pdf_bytes = await asyncio.to_thread(render_pdf, body)
        pdf_sha, csv_sha = _sha(pdf_bytes), _sha(csv_bytes)
        body["files"] = {"pdf": {"sha256": pdf_sha, "bytes": len(pdf_bytes)},
                         "csv": {"sha256": csv_sha, "bytes": len(csv_bytes)}}  # fmt: skip
        document = self.signer.sign(body)
        digest = report_digest(body)
        json_bytes = orjson.dumps(document, option=orjson.OPT_INDENT_2)
        progress("writing to the ledger")
        seq = await self._audit.commit("report.created", requested_by, {
            "id": rid, "from": body["period"]["from"], "to": body["period"]["to"], "sections": list(req.sections),
            "report_sha256": digest, "pdf_sha256": pdf_sha, "csv_sha256": csv_sha,
            "key_id": self.signer.key_id,
        })  # fmt: skip
        files = {"json": (json_bytes, _sha(json_bytes)), "csv": (csv_bytes, csv_sha), "pdf": (pdf_bytes, pdf_sha)}
        await asyncio.to_thread(self._finish, rid, digest, files, seq)

    def _finish(self, rid: str, digest: str, files: dict[str, tuple[bytes, str]], seq: int) -> None:
        """Store the files (with their SHA-256, computed once) and mark the report done, in one transaction."""
        with self._db.transaction():
            for fmt, (content, sha) in files.items():
                self._db.execute("INSERT INTO report_files (id, format, sha256, content) VALUES (?, ?, ?, ?)",
                                 (rid, fmt, sha, content))  # fmt: skip
            self._db.execute("UPDATE reports SET status = 'done', progress = NULL, finished_at = ?, report_sha256 = ?, "
                             "pdf_sha256 = ?, csv_sha256 = ?, ledger_log = ?, ledger_seq = ? WHERE id = ?",
                             (time.time(), digest, files["pdf"][1], files["csv"][1], self._origin, seq,
                              rid))  # fmt: skip

    async def get(self, rid: str) -> dict[str, Any] | None:
        def read() -> Any:
            with self._db.reading():
                return self._db.execute(f"SELECT {_COLUMNS} FROM reports WHERE id = ?", (rid,)).fetchone()

        row = await asyncio.to_thread(read)
        if row is None:
            return None
        view = _view(row)
        if rid in self._progress:
            view["progress"] = self._progress[rid]
        return view

    async def list(self, limit: int = 100) -> list[dict[str, Any]]:
        def read() -> list[Any]:
            with self._db.reading():
                return list(self._db.execute(f"SELECT {_COLUMNS} FROM reports ORDER BY created_at DESC, id DESC "
                                             "LIMIT ?", (limit,)).fetchall())  # fmt: skip

        return [_view(r) for r in await asyncio.to_thread(read)]

    async def file(self, rid: str, fmt: Format) -> tuple[bytes, str] | None:
        """A finished report's file and its SHA-256, or None."""

        def read() -> Any:
            with self._db.reading():
                return self._db.execute("SELECT content, sha256 FROM report_files WHERE id = ? AND format = ?",
                                        (rid, fmt)).fetchone()  # fmt: skip

        row = await asyncio.to_thread(read)
        return None if row is None else (bytes(row[0]), str(row[1]))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _summary(sections: dict[str, Any], entries: int) -> tuple[bool, dict[str, Any]]:
    """Whether the period is empty, and the headline figures (each from its section, noisy ones marked)."""
    summary: dict[str, Any] = {}
    integrity = sections.get("integrity")
    if integrity is not None:
        summary["ledger_entries_in_period"] = entries
        summary["ledger_verification"] = "passed" if integrity["verification"]["ok"] else "FAILED"
    empty = entries == 0
    ops = sections.get("operations")
    if ops is not None:
        for name in ("requests", "errors", "fallbacks"):
            rel = ops.get(name, {})
            if rel.get("released"):
                summary[f"{name} (noisy, epsilon {rel['privacy']['epsilon']})"] = sum(g["value"] for g in rel["groups"])
        if ops["error_rate"] is not None:
            summary["error rate (noisy)"] = ops["error_rate"]
        summary["alerts_fired"] = ops["alerts_fired"]
        summary["alerts_resolved"] = ops["alerts_resolved"]
    acc = sections.get("access_control")
    if acc is not None:
        summary["policy_changes"] = len(acc["policy_changes"])
        summary["authentication_failures"] = acc["authentication_failures"]["count"]
    fair = sections.get("fairness")
    if fair is not None:
        summary["fairness_audits"] = fair["summary"]["audits"]
        summary["fairness_audits_not_passed"] = fair["summary"]["not_passed"]
    spent = [r["privacy"]["epsilon"] for s in sections.values() for r in s.values()
             if isinstance(r, dict) and r.get("released") and not r.get("cached")]  # fmt: skip
    summary["epsilon_spent_by_this_report"] = round(sum(spent), 6)
    if empty:
        summary["note"] = "The ledger holds no entries in this period."
    return empty, summary
