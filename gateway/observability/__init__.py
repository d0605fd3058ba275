"""Monitoring: Prometheus metrics (``metrics``, ``collect``, ``triton``), structured logs (``logs``) and the alert
rules of ``policies/alerts.yaml`` that the gateway evaluates itself (``alerts_policy``, ``signals``, ``evaluator``,
``webhook``, ``export``). See docs/operations.md.
"""
