"""Fairness inside a running gateway: decision records, outcome uploads, scheduled audits and their results.

Built in the app's lifespan and closed with it. ``start`` starts the decision writer and, with
``fairness.scheduler``, the scheduler task (both kept and stopped by ``aclose``). ``run`` runs one audit of the
policy folder by name, as the scheduler does: probe audits through the gateway's own router and ledger,
outcome audits from the store. Each finished audit is kept in the results store (``GET
/admin/fairness/audits``) and observed: its accuracy and metrics set the ``gateway_model_accuracy`` and
``gateway_fairness_metric`` gauges, and its failed checks count in ``gateway_fairness_breaches_total``, which
the ``FairnessThresholdBreached`` rule of ``policies/alerts.yaml`` turns into an alert (ledger entry, log line,
webhook) through the monitoring's own evaluator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from gateway.audit import AuditTrail
from gateway.authz.store import PolicyStore
from gateway.errors import AuditUnavailable, GatewayError, NotFound
from gateway.fairness import upload
from gateway.fairness._compute import worker_pool
from gateway.fairness.outcome_runner import OutcomeServices, run_outcome_audit
from gateway.fairness.recorder import DecisionRecorder
from gateway.fairness.report import OutcomeAuditReport, ProbeSetAudit, record_of
from gateway.fairness.runner import AuditServices, run_audit
from gateway.fairness.scheduler import Scheduler
from gateway.fairness.store import FairnessStore, fairness_url
from gateway.identity.principal import Principal
from gateway.observability.metrics import Metrics
from gateway.routing import Router
from gateway.security import authorize
from gateway.settings import Settings

log = logging.getLogger(__name__)

Report = ProbeSetAudit | OutcomeAuditReport


def failed_checks(report: Report) -> list[str]:
    """The names of the checks that failed (``attribute/metric`` in probe audits)."""
    if isinstance(report, OutcomeAuditReport):
        return [c.metric for c in report.checks if c.status == "fail"]
    return [f"{a.attribute}/{c.metric}" for a in report.attributes for c in a.checks if c.status == "fail"]


class FairnessService:
    def __init__(self, settings: Settings, audit: AuditTrail, policy: PolicyStore, metrics: Metrics) -> None:
        url = fairness_url(settings.ledger_store())
        self.settings = settings
        self.audit = audit
        self.policy = policy
        self.metrics = metrics
        self.store = FairnessStore(url)
        self._writes = FairnessStore(url)  # the decision writer's own connection: an upload never delays it
        cfg = settings.fairness
        self.recorder = DecisionRecorder(self._writes, lambda: policy.engine.files.outcome_audits, audit, metrics,
                                         queue=cfg.record_queue, timeout_s=cfg.record_timeout_s)  # fmt: skip
        self.scheduler = Scheduler(self.store, lambda: policy.engine.files, self.run, replica=settings.ledger.origin,
                                   interval_s=cfg.scheduler_interval_s)  # fmt: skip
        self._router: Router | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, router: Router) -> None:
        self._router = router
        self.recorder.start()
        if self.settings.fairness.scheduler:
            self._task = asyncio.create_task(self.scheduler.run(self._stop), name="fairness-scheduler")

    async def aclose(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()  # an audit in progress is cancelled (fairness.aborted)
            await asyncio.gather(self._task, return_exceptions=True)
        await self.recorder.aclose()
        self.store.close()
        self._writes.close()

    # ----- audits

    async def run(self, name: str, requested_by: str = "scheduler") -> list[Report]:
        """Run the audit ``name`` of the policy folder against each of its models that is a configured route."""
        assert self._router is not None, "started"
        files = self.policy.engine.files
        probe = next((e for e in files.fairness if e.probes.name == name), None)
        outcome = next((e for e in files.outcome_audits if e.audit.name == name), None)
        if probe is None and outcome is None:
            raise NotFound(f"no audit {name!r} in the policy folder", code="audit_not_found")
        routes = {r.route.name: r for r in self._router.routes}
        models = probe.probes.models if probe is not None else outcome.audit.models if outcome is not None else ()
        reports: list[Report] = []
        async with worker_pool() as pool:
            for model in models:
                if model not in routes:
                    log.warning("fairness audit %s: model %r is not a configured route; skipped", name, model)
                    continue
                started = time.time()
                if probe is not None:
                    one: list[Report] = [await run_audit(
                        AuditServices(self._router, self.policy, self.audit), probe, model, requested_by=requested_by,
                        concurrency=self.settings.fairness.probe_concurrency, executor=pool)]  # fmt: skip
                else:
                    assert outcome is not None
                    services = OutcomeServices(self.store, self.audit, self.policy.engine.version)
                    one = list(await run_outcome_audit(services, outcome, model, requested_by=requested_by,
                                                       current_version=routes[model].target.version,
                                                       executor=pool))  # fmt: skip
                for report in one:
                    await self.keep(report, started)
                reports += one
        return reports

    async def keep(self, report: Report, started: float) -> None:
        """Store a finished audit and observe it (gauges, breaches)."""
        record = record_of(report, started=started, finished=time.time(), log=self.settings.ledger.origin)
        try:
            await asyncio.to_thread(self.store.save_audit, record)
        except Exception:  # the result is in the ledger; only the API's copy is missing
            log.exception("fairness audit %s could not be stored (it is in the ledger, entry %d)", record.id,
                          report.seq)  # fmt: skip
        observe(self.metrics, report)

    # ----- outcome uploads

    async def upload(self, principal: Principal, raw: bytes) -> dict[str, Any]:
        """Parse, check and apply an outcomes CSV for ``principal``; the ``fairness.outcomes_uploaded`` entry is
        durable before the outcomes are committed. Errors: see ``gateway.fairness.upload``; 403 when the
        uploader may not ``label`` a model whose decisions the file names."""
        outcomes = await asyncio.to_thread(upload.parse, raw)
        upload_id = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        entry: dict[str, Any] = {}

        async def confirm(per_model: dict[str, int]) -> None:
            for model in sorted(per_model):
                await authorize(self.policy, self.audit, principal, f"model:{model}", "label")
            data = {"upload_id": upload_id, "rows": len(outcomes.rows), "positives": outcomes.positives,
                    "models": per_model, "sha256": outcomes.sha256, "bytes": outcomes.size}  # fmt: skip
            entry.update(data, seq=await self.audit.commit("fairness.outcomes_uploaded", principal.subject, data))

        def confirm_from_thread(per_model: dict[str, int]) -> None:
            future = asyncio.run_coroutine_threadsafe(confirm(per_model), loop)
            try:
                future.result(timeout=60)
            except TimeoutError:
                future.cancel()
                raise AuditUnavailable("the upload's ledger entry was not durable in time: nothing imported") from None

        try:
            await asyncio.to_thread(upload.apply, self.store, outcomes, upload_id, confirm_from_thread)
        except BaseException as exc:
            if "seq" in entry:  # the entry is durable, the commit failed: the ledger says so too
                reason = exc.message if isinstance(exc, GatewayError) else f"the store failed ({type(exc).__name__})"
                with contextlib.suppress(GatewayError):
                    self.audit.record("fairness.outcomes_rolled_back", principal.subject,
                                      {"upload_id": upload_id, "reason": reason})  # fmt: skip
            raise
        return entry


def observe(metrics: Metrics, report: Report) -> None:
    """Set the model's fairness gauges from ``report`` and count its failed checks (the alert's signal)."""
    if isinstance(report, OutcomeAuditReport):
        name = report.audit
        if report.metrics is not None:
            metrics.observe_audit(report.model, report.metrics)
    else:
        name = report.probe_set
        for a in report.attributes:
            if a.metrics is not None:
                metrics.observe_audit(report.model, a.metrics)
    failed = failed_checks(report)
    if failed:
        metrics.fairness_breach(name, report.model, report.version or "", len(failed))
        log.warning("fairness audit %s of %s (version %s): %s failed: %s", name, report.model,
                    report.version or "default", report.audit_id, ", ".join(failed),
                    extra={"event": "fairness.breached", "audit": name, "model": report.model,
                           "audit_id": report.audit_id, "failed": failed})  # fmt: skip
