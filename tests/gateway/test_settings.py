"""Settings: defaults, precedence, and errors that name the file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import Settings


def test_embedded_defaults() -> None:
    """With no file, the gateway serves the local demo models over TLS on 8443."""
    s = Settings.load(None)
    assert s.server.port == 8443 and s.tls.enabled and s.tls.min_version == "1.2"
    assert s.local_triton.enabled and s.backends["local"].url == "embedded"
    assert [m.name for m in s.models] == ["smollm2-135m-instruct", "e5-small"]


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Arguments beat environment, which beats the file, which beats the defaults."""
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("server:\n  port: 9000\n  max_body_bytes: 1234\ntls:\n  min_version: '1.3'\n")
    assert Settings.load(cfg).server.port == 9000
    monkeypatch.setenv("GATEWAY_SERVER__PORT", "9100")
    s = Settings.load(cfg)
    assert s.server.port == 9100 and s.server.max_body_bytes == 1234 and s.tls.min_version == "1.3"
    assert Settings.load(cfg, server={"port": 9200}).server.port == 9200


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server:\n  port: 70000\n", ":2: server.port: Input should be less than or equal to 65535"),
        ("server:\n  prot: 1\n", ":2: server.prot: Extra inputs are not permitted"),
        ("models:\n  - name: a\n    backend: nope\n", "models.0.backend: unknown backend 'nope'"),
        ("models:\n  - name: a\n    backend: local\n    fallback: b\n", "models.0.fallback: unknown model 'b'"),
        ("models:\n  - name: a\n    backend: local\n  - name: a\n    backend: local\n", "duplicate model names: a"),
        ("tls:\n  client_auth: required\n", ":2: tls: client_auth needs client_ca_file"),
        ("local_triton:\n  enabled: false\n", "backends.local.url: 'embedded' needs local_triton.enabled"),
        ("backends:\n  x:\n    kind: grpc\n", ":3: backends.x: Input tag 'grpc' found using 'kind'"),
        ("server: [1, 2\n", ":2: invalid YAML"),
        ("- a\n- b\n", "the top level must be a mapping"),
    ],
)
def test_bad_config_names_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    """A bad config file fails fast with the file, the line where it can be found, the key and why."""
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        Settings.load(cfg)
    assert str(cfg) in str(info.value)
    assert expected in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    """A config path that does not exist is an error, not a silent fall back to defaults."""
    with pytest.raises(ConfigError, match="cannot read config file"):
        Settings.load(tmp_path / "absent.yaml")


def test_settings_are_frozen() -> None:
    """Settings cannot change after start."""
    s = Settings.load(None)
    with pytest.raises(Exception, match="frozen"):
        s.server.port = 1  # type: ignore[misc]
