"""Read and validate a policy folder, strictly, before Casbin ever sees it.

Casbin's own file adapter accepts broken files silently: a line missing its effect loads and
later makes every decision raise, a mistyped line type is dropped, an empty or truncated file
loads what is left. So the gateway parses the CSV itself and refuses, with file, line and
reason, anything that is not exactly one of:

    p, <subject>, <object>, <action>, allow|deny
    g, <member>, <role>

The folder holds ``model.conf``, ``policy.csv`` and/or ``policy.d/*.csv``, ``limits.yaml``,
``pii.yaml`` (``gateway.pii.policy``), ``privacy.yaml`` (``gateway.stats.policy``), ``alerts.yaml``
(``gateway.observability.alerts_policy``), ``tests.yaml`` and ``fairness/*.yaml`` (probe sets:
``gateway.fairness.probeset``; outcome audits, ``kind: outcome``: ``gateway.fairness.decisions``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from casbin.model import Model
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import PolicyError
from gateway.fairness.decisions import DecisionAudit, DecisionAuditFile
from gateway.fairness.probeset import ProbeSet, ProbeSetFile
from gateway.observability.alerts_policy import AlertPolicy
from gateway.pii.policy import PIIPolicy
from gateway.stats.policy import PrivacyPolicy

ACTIONS = frozenset({"infer", "embed", "read", "admin", "report", "label", "*"})
REQUEST = ["sub", "roles", "obj", "act"]
_SUBJECT = re.compile(r"^(role|user|apikey):[A-Za-z0-9_.@:-]+$")
_OBJECT = re.compile(r"^(route:/[A-Za-z0-9_./{}-]*|model:[A-Za-z0-9_.:-]*)\*?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimit(_Strict):
    model: str = "*"
    """A model name, or a pattern ending in * (keyMatch)."""
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)


class RoleLimits(_Strict):
    max_tokens: int | None = Field(None, ge=1)
    """Largest max_tokens a request may ask for (and the cap when it asks for none)."""
    stream: bool | None = None
    """Whether streaming is allowed."""
    rate: tuple[RateLimit, ...] = ()


class Limits(_Strict):
    default: RoleLimits
    """Applies to every caller; a role's own entry can only raise a limit, never lower it."""
    roles: dict[str, RoleLimits] = {}


class PolicyTest(_Strict):
    name: str
    subject: str = "user:test"
    roles: tuple[str, ...] = ()
    object: str
    action: str
    expect: str = Field(pattern="^(allow|deny)$")


class PolicyTests(_Strict):
    tests: tuple[PolicyTest, ...] = Field(min_length=1)


@dataclass(frozen=True)
class PolicyFiles:
    model_text: str
    rules: list[list[str]]
    groupings: list[list[str]]
    limits: Limits
    pii: PIIPolicy
    privacy: PrivacyPolicy
    tests: tuple[PolicyTest, ...]
    digests: dict[str, str]
    """SHA-256 of each file, by path relative to the folder."""
    fairness: tuple[ProbeSetFile, ...] = ()
    """Counterfactual probe sets (``fairness/*.yaml``), in file name order."""
    alerts: AlertPolicy = field(default_factory=AlertPolicy)
    """Alert rules (``alerts.yaml``), evaluated by the gateway (``gateway.observability``)."""
    outcome_audits: tuple[DecisionAuditFile, ...] = ()
    """Outcome audits of decision models (``fairness/*.yaml`` with ``kind: outcome``), in file name order."""

    @property
    def digest(self) -> str:
        """One digest over all files: the policy's version identity."""
        h = hashlib.sha256()
        for name in sorted(self.digests):
            h.update(f"{name}\0{self.digests[name]}\n".encode())
        return h.hexdigest()


def _read(path: Path, root: Path, digests: dict[str, str]) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read: {exc.strerror}") from None
    digests[str(path.relative_to(root))] = hashlib.sha256(raw).hexdigest()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _model(path: Path, text: str) -> None:
    model = Model()
    try:
        model.load_model_from_text(text)
    except Exception as exc:  # casbin raises bare exceptions of many kinds for a bad model
        raise PolicyError(f"{path}: invalid Casbin model: {exc}") from None
    for sec, key in (("r", "r"), ("p", "p"), ("e", "e"), ("m", "m")):
        if sec not in model.model or key not in model[sec]:
            raise PolicyError(f"{path}: missing section for {key!r}")
    tokens = [t.removeprefix("r_") for t in model["r"]["r"].tokens]
    if tokens != REQUEST:
        raise PolicyError(f"{path}: request_definition must be 'r = {', '.join(REQUEST)}' (the gateway sends these)")
    if [t.removeprefix("p_") for t in model["p"]["p"].tokens] != ["sub", "obj", "act", "eft"]:
        raise PolicyError(f"{path}: policy_definition must be 'p = sub, obj, act, eft'")


def _csv(path: Path, text: str, rules: list[list[str]], groupings: list[list[str]]) -> None:
    if text and not text.endswith("\n"):
        raise PolicyError(f"{path}: the last line has no newline: is the file truncated?")
    for lineno, row in enumerate(csv.reader(io.StringIO(text), skipinitialspace=True), start=1):
        fields = [f.strip() for f in row]
        if not fields or fields == [""] or fields[0].startswith("#"):
            continue
        where = f"{path}:{lineno}"
        kind = fields[0]
        if kind == "p":
            if len(fields) != 5:
                raise PolicyError(
                    f"{where}: a p line needs 4 fields (subject, object, action, allow|deny), has {len(fields) - 1}"
                )
            _, sub, obj, act, eft = fields
            if not _SUBJECT.match(sub):
                raise PolicyError(f"{where}: subject {sub!r} must be role:NAME, user:ID or apikey:ID")
            if not _OBJECT.match(obj):
                raise PolicyError(f"{where}: object {obj!r} must be route:/PATH or model:NAME, with * only at the end")
            if act not in ACTIONS:
                raise PolicyError(f"{where}: unknown action {act!r} (one of {', '.join(sorted(ACTIONS))})")
            if eft not in ("allow", "deny"):
                raise PolicyError(f"{where}: effect must be allow or deny, not {eft!r}")
            if [sub, obj, act, eft] in rules:
                raise PolicyError(f"{where}: duplicate rule")
            rules.append([sub, obj, act, eft])
        elif kind == "g":
            if len(fields) != 3:
                raise PolicyError(f"{where}: a g line needs 2 fields (member, role), has {len(fields) - 1}")
            if not all(_SUBJECT.match(f) for f in fields[1:]) or not fields[2].startswith("role:"):
                raise PolicyError(f"{where}: g links a role:, user: or apikey: member to a role:NAME")
            if fields[1:] in groupings:
                raise PolicyError(f"{where}: duplicate role link")
            groupings.append(fields[1:])
        else:
            raise PolicyError(f"{where}: unknown line type {kind!r} (p or g)")


def _load_yaml(path: Path, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise PolicyError(
            f"{path}:{mark.line + 1 if mark else '?'}: invalid YAML: {getattr(exc, 'problem', exc)}"
        ) from None


def _validate(path: Path, data: Any, schema: type[BaseModel]) -> Any:
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise PolicyError(f"{path}: {key}: {msg}" if key else f"{path}: {msg}") from None


def _yaml(path: Path, text: str, schema: type[BaseModel]) -> Any:
    return _validate(path, _load_yaml(path, text), schema)


def load(root: Path) -> PolicyFiles:
    """Read and validate every file of the policy folder ``root``; raise PolicyError on the first fault."""
    digests: dict[str, str] = {}
    model_path = root / "model.conf"
    model_text = _read(model_path, root, digests)
    _model(model_path, model_text)
    csvs = ([root / "policy.csv"] if (root / "policy.csv").exists() else []) + sorted((root / "policy.d").glob("*.csv"))
    if not csvs:
        raise PolicyError(f"{root}: no policy.csv or policy.d/*.csv")
    rules: list[list[str]] = []
    groupings: list[list[str]] = []
    for path in csvs:
        _csv(path, _read(path, root, digests), rules, groupings)
    if not any(r[3] == "allow" for r in rules):
        raise PolicyError(f"{root}: the policy allows nothing (empty or truncated files?)")
    limits = _yaml(root / "limits.yaml", _read(root / "limits.yaml", root, digests), Limits)
    pii = _yaml(root / "pii.yaml", _read(root / "pii.yaml", root, digests), PIIPolicy)
    privacy = _yaml(root / "privacy.yaml", _read(root / "privacy.yaml", root, digests), PrivacyPolicy)
    alerts = _yaml(root / "alerts.yaml", _read(root / "alerts.yaml", root, digests), AlertPolicy)
    tests = _yaml(root / "tests.yaml", _read(root / "tests.yaml", root, digests), PolicyTests)
    fairness, outcome_audits = _fairness(root, digests)
    return PolicyFiles(model_text, rules, groupings, limits, pii, privacy, tests.tests, digests, fairness,
                       alerts=alerts, outcome_audits=outcome_audits)  # fmt: skip


def _fairness(root: Path, digests: dict[str, str]) -> tuple[tuple[ProbeSetFile, ...], tuple[DecisionAuditFile, ...]]:
    """The probe sets and the outcome audits (``kind: outcome``) of ``fairness/``; one name space for both, and
    a model in at most one outcome audit (its requests carry one audit's attribute)."""
    probes: dict[str, ProbeSetFile] = {}
    outcomes: dict[str, DecisionAuditFile] = {}
    audited: dict[str, str] = {}
    stray = sorted((root / "fairness").glob("*.yml"))
    if stray:  # would be ignored: refused, so that a probe set never silently stops being one
        raise PolicyError(f"{stray[0]}: probe sets are read from *.yaml files only: rename it")
    for path in sorted((root / "fairness").glob("*.yaml")):
        text = _read(path, root, digests)
        rel = str(path.relative_to(root))
        raw = _load_yaml(path, text)
        entry: ProbeSetFile | DecisionAuditFile
        if isinstance(raw, dict) and raw.get("kind", "probe") != "probe":
            audit = _validate(path, raw, DecisionAudit)
            name, entry = audit.name, DecisionAuditFile(rel, digests[rel], audit)
        else:
            if isinstance(raw, dict):
                raw = {k: v for k, v in raw.items() if k != "kind"}
            probe_set = _validate(path, raw, ProbeSet)
            name, entry = probe_set.name, ProbeSetFile(rel, digests[rel], probe_set)
        other = probes.get(name) or outcomes.get(name)
        if other is not None:
            raise PolicyError(f"{path}: name: {name!r} is also the name of {other.path}")
        if isinstance(entry, DecisionAuditFile):
            for model in entry.audit.models:
                if model in audited:
                    raise PolicyError(f"{path}: models: {model!r} is already audited by {audited[model]}")
                audited[model] = rel
            outcomes[name] = entry
        else:
            probes[name] = entry
    return tuple(probes.values()), tuple(outcomes.values())
