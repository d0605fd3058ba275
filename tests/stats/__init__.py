"""Tests of the differential-privacy mechanisms and the privacy budget."""
