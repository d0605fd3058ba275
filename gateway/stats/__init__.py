"""Differentially private statistics: OpenDP mechanisms (``mechanisms``) and the privacy budget (``budget``)."""
