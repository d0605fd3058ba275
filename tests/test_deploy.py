"""docker-compose.yml and the gateway config it mounts agree (no Docker engine runs here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gateway.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _mounts(service: dict) -> dict[str, str]:
    return {v.split(":")[1]: v.split(":")[0] for v in service["volumes"] if v.startswith("./")}


def test_compose_gateway_config_is_valid() -> None:
    """The config the compose file mounts loads, targets the triton service, and its templates exist."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    gw, triton = compose["services"]["gateway"], compose["services"]["triton"]
    mounts = _mounts(gw)
    config = ROOT / mounts["/etc/gateway/gateway.yaml"]
    settings = Settings.load(config)
    assert not settings.local_triton.enabled
    urls = {b.url for b in settings.backends.values()}
    assert urls == {"triton:8001"} and "--grpc-port=8001" in triton["command"]
    assert f"{settings.server.port}:{settings.server.port}" in gw["ports"]
    templates = ROOT / mounts["/etc/gateway/templates"]
    for m in settings.models:
        assert m.chat_template_file is not None
        assert (templates / m.chat_template_file.name).is_file()
    assert (ROOT / gw["build"]["dockerfile"]).is_file()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="no docker-compose client to parse the file")
def test_compose_file_parses() -> None:
    """Where a compose client exists, it parses the file without an engine."""
    subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], check=True)


def test_llama3_template_renders() -> None:
    """The shipped Llama 3 chat template renders messages into Llama 3's prompt format."""
    from backends.chat_template import render

    source = (ROOT / "deploy" / "templates" / "llama3.jinja").read_text()
    out = render(source, [{"role": "system", "content": "S"}, {"role": "user", "content": "U "}])
    assert out == ("<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
                   "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n")  # fmt: skip
