"""The documented example config is valid and equals the embedded defaults."""

from __future__ import annotations

from pathlib import Path

from gateway.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_is_the_defaults() -> None:
    """gateway.example.yaml loads and states exactly the built-in defaults."""
    assert Settings.load(ROOT / "gateway.example.yaml") == Settings.load(None)
