"""Fairness audits.

Metrics, pure functions without I/O: group metrics with bootstrap intervals for decision models (``metrics``)
and counterfactual probes of generative models (``probes``); result types in ``results``, resampling in
``bootstrap``, and a fairlearn reference for cross-checks and reports in ``reference``.

Probe audits: probe sets from ``policies/fairness/*.yaml`` (``probeset``, outcome ``readers``), expanded into
requests (``plan``), sent through the gateway's router as the fairness auditor (``send``), scored in a worker
process (``_compute``), judged against the set's thresholds (``verdict``) and recorded (``runner``,
``report``).
"""
