"""Fairness audits: group metrics with bootstrap intervals for decision models (``metrics``) and counterfactual
probes of generative models (``probes``); result types in ``results``, resampling in ``bootstrap``, and a
fairlearn reference for cross-checks and reports in ``reference``. Pure functions: no I/O, no event loop.
"""
