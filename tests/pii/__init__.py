"""Tests of gateway.pii."""
