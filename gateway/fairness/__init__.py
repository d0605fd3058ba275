"""Fairness audits.

Metrics, pure functions without I/O: group metrics with bootstrap intervals for decision models (``metrics``)
and counterfactual probes of generative models (``probes``); result types in ``results``, resampling in
``bootstrap``, and a fairlearn reference for cross-checks and reports in ``reference``.

Probe audits: probe sets from ``policies/fairness/*.yaml`` (``probeset``, outcome ``readers``), expanded into
requests (``plan``), sent through the gateway's router as the fairness auditor (``send``), scored in a worker
process (``_compute``), judged against the set's thresholds (``verdict``) and recorded (``runner``,
``report``).

Outcome audits of decision models: definitions (``decisions``), the decisions recorded on the request path
(``recorder``), ground-truth uploads (``upload``), the audit itself (``outcome_runner``). Shared: the store
beside the ledger for decisions, results and schedule slots (``store``), schedules (``schedule``) and the
scheduler that runs them on one replica (``scheduler``), and what a running gateway does with all of it
(``service``).
"""
