"""Tests of the fairness audits: metric definitions, bootstrap intervals, counterfactual probes."""
