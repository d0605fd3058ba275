"""deploy/kubernetes: every object is valid Kubernetes, and the objects agree with each other and the repository."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.settings import Settings, TritonBackendSettings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30"  # the oldest release the manifests target; strict: unknown fields fail
EXAMPLE_SECRETS = "secret.example.yaml"  # applied by hand, never by kustomize (placeholders)


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def _generated() -> list[dict[str, Any]]:
    """The configMapGenerator ConfigMaps, built as kustomize builds them (less the hash suffix)."""
    maps = []
    for gen in _kustomization()["configMapGenerator"]:
        data = {}
        for entry in gen["files"]:
            key, _, rel = entry.rpartition("=")
            path = K8S / rel
            data[key or path.name] = path.read_text()
        maps.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    return maps


def _objects() -> list[dict[str, Any]]:
    docs = [d for p in _manifest_files() for d in yaml.safe_load_all(p.read_text()) if d is not None]
    return docs + _generated()


OBJECTS = _objects()


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in OBJECTS if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [o for o in OBJECTS if o["kind"] == kind]


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"these tests read matchLabels only: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _pod_labels(deployment: str) -> dict[str, str]:
    return _one("Deployment", deployment)["spec"]["template"]["metadata"]["labels"]


def _container(deployment: str, name: str) -> dict[str, Any]:
    spec = _one("Deployment", deployment)["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == name)


def _port(container: dict[str, Any], port: int | str) -> int:
    """A container port by number or name, as probes and Services name it."""
    for p in container["ports"]:
        if port in (p["containerPort"], p["name"]):
            return int(p["containerPort"])
    raise AssertionError(f"container {container['name']} has no port {port}")


def _mounts(container: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container["volumeMounts"]}


def _quantity(value: str | int) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


@pytest.mark.parametrize("obj", OBJECTS, ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_object_is_valid_kubernetes(obj: dict[str, Any]) -> None:
    """Each object validates against the strict schema of Kubernetes 1.30 (no unknown or misspelt fields)."""
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_example_secrets() -> None:
    """kustomize applies every manifest file, except the placeholder Secrets, which would overwrite the real ones."""
    resources = set(_kustomization()["resources"])
    assert resources == {p.name for p in _manifest_files()} - {EXAMPLE_SECRETS}
    assert EXAMPLE_SECRETS not in resources


SUBFOLDER_MAPS = {"fairness": "gateway-fairness"}
"""ConfigMaps of the policy folder's subfolders (a ConfigMap key cannot hold a folder), projected into it."""


def test_policies_configmap_holds_every_policy_file() -> None:
    """The policy ConfigMap is generated from every file in policies/: a policy file added later must be added."""
    policies = ROOT / "policies"
    subfolders = [p.name for p in policies.iterdir() if p.is_dir()]
    assert set(subfolders) <= set(SUBFOLDER_MAPS), f"policies/{subfolders}: each subfolder needs a ConfigMap of its own"
    expected = {p.name: p.read_text() for p in policies.iterdir() if p.is_file() and p.suffix != ".md"}
    assert _one("ConfigMap", "gateway-policies")["data"] == expected


def test_policy_subfolders_are_projected_into_the_policy_folder() -> None:
    """Each policies/ subfolder is a ConfigMap of all its files, and the policy volume puts each at its path."""
    volume = next(v for v in _one("Deployment", "gateway")["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "policies")  # fmt: skip
    sources = {s["configMap"]["name"]: s["configMap"] for s in volume["projected"]["sources"]}
    assert "items" not in sources["gateway-policies"]  # every key, at the top of the folder
    for folder, name in SUBFOLDER_MAPS.items():
        files = {p.name: p.read_text() for p in (ROOT / "policies" / folder).iterdir() if p.suffix != ".md"}
        assert _one("ConfigMap", name)["data"] == files
        assert {i["key"]: i["path"] for i in sources[name]["items"]} == {f: f"{folder}/{f}" for f in files}


def test_triton_has_a_gpu_and_its_limits() -> None:
    """Triton asks for one GPU, and is limited to 8 CPUs and 64Gi, as the design sizes it."""
    resources = _container("triton", "triton")["resources"]
    assert resources["limits"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": 1}
    # A GPU is an extended resource: Kubernetes needs its request equal to its limit.
    assert resources["requests"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["memory"] == resources["limits"]["memory"]


def test_triton_probes_use_its_health_endpoints() -> None:
    """Triton's probes call its own /v2/health endpoints on its HTTP port."""
    triton = _container("triton", "triton")
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert _port(triton, triton[probe]["httpGet"]["port"]) == 8000
    assert "--http-port=8000" in triton["args"]


def test_gateway_probes_use_healthz_and_readyz_over_https() -> None:
    """The gateway is live on /healthz and ready on /readyz, both over HTTPS on its TLS port."""
    gw = _container("gateway", "gateway")
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for probe, path in expected.items():
        get = gw[probe]["httpGet"]
        assert (get["path"], get["scheme"], _port(gw, get["port"])) == (path, "HTTPS", 8443)


@pytest.mark.parametrize("deployment", ["gateway", "triton", "redis"])
def test_pods_run_unprivileged_with_resources(deployment: str) -> None:
    """Every pod runs as non-root without privilege escalation, and every container has requests and limits."""
    spec = _one("Deployment", deployment)["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["automountServiceAccountToken"] is False
    for c in spec["containers"] + spec.get("initContainers", []):
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{deployment}/{c['name']} {kind}"


def test_gateway_root_filesystem_is_read_only() -> None:
    """The gateway's containers write only to their volumes (state and /tmp)."""
    spec = _one("Deployment", "gateway")["spec"]["template"]["spec"]
    for c in spec["containers"] + spec["initContainers"]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"/var/lib/gateway", "/tmp"} <= set(_mounts(_container("gateway", "gateway")).values())


@pytest.mark.parametrize("service", ["gateway", "triton", "redis"])
def test_service_selects_its_deployment_and_ports(service: str) -> None:
    """A Service selects the pods of exactly one Deployment, and each target port is a port of its container."""
    svc = _one("Service", service)["spec"]
    owners = [
        d
        for d in _of_kind("Deployment")
        if _matches({"matchLabels": svc["selector"]}, _pod_labels(d["metadata"]["name"]))
    ]
    assert [d["metadata"]["name"] for d in owners] == [service]
    for d in _of_kind("Deployment"):
        assert _matches(d["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
    (container,) = owners[0]["spec"]["template"]["spec"]["containers"]
    for p in svc["ports"]:
        assert _port(container, p["targetPort"]) == p["port"]


def test_hpa_scales_the_gateway_on_request_rate_and_cpu() -> None:
    """The HPA targets the gateway Deployment, on a per-pod request rate with CPU as a fallback."""
    hpa = _one("HorizontalPodAutoscaler", "gateway")["spec"]
    ref = hpa["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment")
    _one("Deployment", ref["name"])
    assert ref["name"] == "gateway"
    kinds = {m["type"]: m for m in hpa["metrics"]}
    assert kinds["Pods"]["pods"]["metric"]["name"] == "gateway_http_requests_per_second"
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    assert hpa["minReplicas"] >= 2, "one replica cannot be drained without an outage"


def test_pdb_selects_the_gateway_pods_only() -> None:
    """The disruption budget covers the gateway's pods and no others."""
    selector = _one("PodDisruptionBudget", "gateway")["spec"]["selector"]
    assert [d for d in ("gateway", "triton", "redis") if _matches(selector, _pod_labels(d))] == ["gateway"]


def _policies_for(deployment: str) -> list[dict[str, Any]]:
    return [p["spec"] for p in _of_kind("NetworkPolicy") if _matches(p["spec"]["podSelector"], _pod_labels(deployment))]


def _ports(rule: dict[str, Any]) -> set[int]:
    assert rule.get("ports"), f"a rule without ports allows every port: {rule}"
    return {p["port"] for p in rule["ports"]}


def _is_gateway_in_namespace(peer: dict[str, Any]) -> bool:
    """A peer that is the gateway's pods of this namespace, and nothing else."""
    return set(peer) == {"podSelector"} and [
        d for d in ("gateway", "triton", "redis") if _matches(peer["podSelector"], _pod_labels(d))
    ] == ["gateway"]


def test_namespace_denies_all_traffic_by_default() -> None:
    """A policy selects every pod for ingress and egress and allows nothing: the rest are exceptions."""
    assert any(
        p["podSelector"] == {}
        and set(p["policyTypes"]) == {"Ingress", "Egress"}
        and not p.get("ingress")
        and not p.get("egress")
        for p in (n["spec"] for n in _of_kind("NetworkPolicy"))
    )


def test_only_the_gateway_reaches_triton() -> None:
    """Triton admits gRPC (8001) from the gateway's pods only, metrics (8002) from them and Prometheus, nothing else."""
    rules = [r for p in _policies_for("triton") for r in p.get("ingress", [])]
    assert rules
    allowed: set[int] = set()
    for rule in rules:
        assert rule.get("from"), f"a rule without 'from' admits every source: {rule}"
        ports = _ports(rule)
        allowed |= ports
        for peer in rule["from"]:
            if _is_gateway_in_namespace(peer):
                continue
            prometheus = (
                peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") == "prometheus"
            )
            assert prometheus and "ipBlock" not in peer, f"Triton admits {peer}"
            assert ports == {8002}, f"Prometheus may reach Triton's metrics port only, not {ports}"
    assert allowed == {8001, 8002}
    assert _port(_container("triton", "triton"), "grpc") == 8001
    assert _port(_container("triton", "triton"), "metrics") == 8002
    assert all(not p.get("egress") and "Egress" in p["policyTypes"] for p in _policies_for("triton"))


def test_gateway_egress_goes_to_its_dependencies_only() -> None:
    """The gateway may open connections to Triton, Redis, PostgreSQL, the chain node and DNS, nowhere else."""
    reached = set()
    for rule in (r for p in _policies_for("gateway") for r in p.get("egress", [])):
        assert rule.get("to"), f"a rule without 'to' allows every destination: {rule}"
        for peer in rule["to"]:
            assert "ipBlock" not in peer
            name = (
                peer["podSelector"]["matchLabels"].get("app.kubernetes.io/name")
                or peer["podSelector"]["matchLabels"]["k8s-app"]
            )
            reached |= {(name, port) for port in _ports(rule)}
    assert reached == {("triton", 8001), ("triton", 8002), ("redis", 6379), ("postgresql", 5432), ("chain-node", 8545),
                       ("kube-dns", 53)}  # fmt: skip
    ingress = [r for p in _policies_for("gateway") for r in p.get("ingress", [])]
    assert [_ports(r) for r in ingress] == [{8443}]


def _gateway_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a gateway pod loads: its ConfigMap and the GATEWAY_* variables of its container."""
    for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    gw = _container("gateway", "gateway")
    for var in gw["env"]:
        if var["name"].startswith("GATEWAY_") and var["name"] != "GATEWAY_CONFIG" and "value" in var:
            monkeypatch.setenv(var["name"], re.sub(r"\$\((\w+)\)", r"\1", var["value"]))
    return Settings.load(K8S / "config" / "gateway.yaml")


def test_gateway_config_matches_the_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap's settings load, and each path, port and host in them is a volume, port or Service here."""
    settings = _gateway_settings(monkeypatch)
    gw = _container("gateway", "gateway")
    mounts = _mounts(gw)
    env = {v["name"]: v.get("value") for v in gw["env"]}
    assert env["GATEWAY_CONFIG"] == f"{mounts['config']}/gateway.yaml"
    assert "gateway.yaml" in _one("ConfigMap", "gateway-config")["data"]
    assert str(settings.state_dir) == mounts["state"] == env["GATEWAY_STATE_DIR"]
    assert str(settings.policy.dir) == mounts["policies"]
    assert settings.tls.enabled and settings.tls.cert_file and settings.tls.key_file
    assert {settings.tls.cert_file.parent, settings.tls.key_file.parent} == {Path(mounts["tls"])}
    assert {settings.tls.cert_file.name, settings.tls.key_file.name} == {"tls.crt", "tls.key"}  # kubernetes.io/tls keys
    assert settings.server.port == _port(gw, "https")
    templates = _one("ConfigMap", "gateway-templates")["data"]
    for m in settings.models:
        assert m.chat_template_file is not None
        assert str(m.chat_template_file.parent) == mounts["templates"] and m.chat_template_file.name in templates
    assert not settings.local_triton.enabled
    triton_ports = {p["port"] for p in _one("Service", "triton")["spec"]["ports"]}
    for b in settings.backends.values():
        assert isinstance(b, TritonBackendSettings)
        host, _, port = b.url.rpartition(":")
        assert (
            host == "triton"
            and int(port) in triton_ports
            and int(port) == _port(_container("triton", "triton"), "grpc")
        )
    assert settings.redis is not None and settings.redis.url.endswith("@redis:6379/0")
    assert settings.ledger_store().startswith("postgresql://")
    assert "POD_NAME" in settings.ledger.origin, "each replica needs a log of its own"
    workers = settings.pii.workers
    assert workers is not None and workers < _quantity(gw["resources"]["limits"]["cpu"]), (
        "one core is left to the event loop"
    )


def _example_secrets() -> dict[str, dict[str, str]]:
    docs = yaml.safe_load_all((K8S / EXAMPLE_SECRETS).read_text())
    return {d["metadata"]["name"]: d["stringData"] for d in docs if d}


def test_example_secrets_hold_placeholders_only() -> None:
    """The example Secrets carry no real value: every entry is REPLACE_ME."""
    for name, data in _example_secrets().items():
        assert data and set(data.values()) == {"REPLACE_ME"}, name


def test_secret_references_exist_in_the_example() -> None:
    """Every Secret and key the Deployments read is in the example, so the documented kubectl command makes them all."""
    secrets = _example_secrets()
    for d in _of_kind("Deployment"):
        spec = d["spec"]["template"]["spec"]
        for c in spec["containers"] + spec.get("initContainers", []):
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]], f"{d['metadata']['name']}: {ref}"
        for v in spec.get("volumes", []):
            if "secret" in v:
                assert v["secret"]["secretName"] in secrets


def test_init_container_installs_the_keys_where_the_gateway_reads_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The init script, run on the example Secret's keys, puts each key file where the gateway reads it, mode 0600."""
    spec = _one("Deployment", "gateway")["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    mounts = _mounts(init)
    secret_dir, state = tmp_path / "secrets", tmp_path / "state"
    secret_dir.mkdir()
    for key in _example_secrets()["gateway-secrets"]:
        (secret_dir / key).write_text("x")
        (secret_dir / key).chmod(0o440)
    script = init["command"][2].replace(mounts["secrets"], str(secret_dir)).replace(mounts["state"], str(state))
    state.mkdir()
    subprocess.run([*init["command"][:2], script], check=True)
    settings = _gateway_settings(monkeypatch).model_copy(update={"state_dir": state})
    ledger = settings.ledger
    assert ledger.signing_key is None and ledger.body_key is None and ledger.chain.keystore is None
    assert ledger.chain.password_file is None and settings.auth.api_keys_db is None
    expected = ["checkpoint.key", "body-hmac.key", "anchor-key.json", "anchor-key.json.password"]
    for path in [settings.ledger_dir() / name for name in expected] + [settings.api_keys_db]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl to render the kustomization")
def test_kustomize_renders_what_the_tests_check() -> None:
    """kubectl kustomize builds the folder, valid for 1.30, into the objects checked here, in one namespace."""
    out = subprocess.run(
        ["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(K8S)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    rendered = [d for d in yaml.safe_load_all(out) if d]
    names = set()
    for obj in rendered:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        name = obj["metadata"]["name"]
        if obj["kind"] == "ConfigMap":  # kustomize appends a hash of the contents
            name = name.rpartition("-")[0]
            assert obj["data"] == _one("ConfigMap", name)["data"]
        names.add((obj["kind"], name))
        assert obj["metadata"].get("namespace", "llm-gateway") == "llm-gateway"
    expected = {(o["kind"], o["metadata"]["name"]) for o in OBJECTS if o["kind"] != "Secret"}
    assert names == expected
