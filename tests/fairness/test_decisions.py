"""Outcome audit definitions (``kind: outcome`` in policies/fairness/): the schema, its loading beside the probe
sets, and the request-side parts of the recorder (reading the attribute, taking a body field out)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from gateway.authz import files
from gateway.errors import PolicyError
from gateway.fairness.decisions import DecisionAudit
from gateway.fairness.recorder import take
from tests.conftest import POLICIES

BASE: dict[str, Any] = {
    "kind": "outcome",
    "name": "screening-outcomes",
    "description": "test",
    "models": ["screener"],
    "prediction": {"kind": "yes_no"},
    "attribute": {"header": "X-Audit-Group", "groups": ["a", "b"]},
}


def audit(**changes: Any) -> DecisionAudit:
    return DecisionAudit.model_validate({**BASE, **changes})


def test_the_shipped_policy_holds_an_outcome_audit_beside_the_probe_sets() -> None:
    """policies/fairness/ loads its probe sets and its outcome audit, each into its own list."""
    loaded = files.load(POLICIES)
    assert [e.audit.name for e in loaded.outcome_audits] == ["credit-decisions"]
    assert {e.probes.name for e in loaded.fairness} == {"cv-screening", "loan-prescreening"}
    entry = loaded.outcome_audits[0]
    assert entry.path == "fairness/credit_decisions.yaml" and entry.digest == loaded.digests[entry.path]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"attribute": {"groups": ["a", "b"]}}, "give exactly one of header and field"),
        ({"attribute": {"header": "X-G", "field": "metadata.g", "groups": ["a", "b"]}}, "exactly one of header"),
        ({"attribute": {"header": "X G", "groups": ["a", "b"]}}, "not a header name"),
        ({"attribute": {"field": "messages.0", "groups": ["a", "b"]}}, "not a dotted path"),
        ({"attribute": {"field": "model.group", "groups": ["a", "b"]}}, "inside a field the gateway reads"),
        ({"attribute": {"header": "X-G", "groups": ["a"]}}, "at least 2 items"),
        ({"attribute": {"header": "X-G", "groups": ["a", "a"]}}, "a group is listed twice"),
        ({"attribute": {"header": "X-G", "groups": ["a", "b/c"]}}, "letters, digits"),
        ({"prediction": {"kind": "refusal"}}, "does not match any of the expected tags"),
        ({"window": "30m"}, "not a number of hours or days"),
        ({"window": "400d"}, "reaches past retention_days"),
        ({"models": ["x", "x"]}, "a model is listed twice"),
        ({"on_record_error": "ignore"}, "'fail_closed' or 'log'"),
        ({"thresholds": {"max_accuracy_drop": 2}}, "less than or equal to 1"),
        ({"schedule": {"cron": "0 3 * *"}}, "five fields"),
        ({"surprise": 1}, "Extra inputs are not permitted"),
    ],
)
def test_bad_definitions_are_refused(changes: dict[str, Any], message: str) -> None:
    """Each fault is refused with its reason."""
    with pytest.raises(ValidationError) as info:
        audit(**changes)
    assert message in str(info.value)


def folder_with(tmp_path: Path, **extra: dict[str, Any]) -> Path:
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    for name, content in extra.items():
        (folder / "fairness" / f"{name}.yaml").write_text(yaml.safe_dump(content))
    return folder


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"x": {**BASE, "name": "cv-screening"}}, "x.yaml: name: 'cv-screening' is also the name of"),
        ({"x": {**BASE, "models": ["credit-screener"]}}, "x.yaml: models: 'credit-screener' is already audited by "
                                                         "fairness/credit_decisions.yaml"),
        ({"x": {**BASE, "kind": "outcomes"}}, "x.yaml: kind: Input should be 'outcome'"),
        ({"x": {**BASE, "prediction": None}}, "x.yaml: prediction"),
    ],
)  # fmt: skip
def test_folder_faults_name_the_file(tmp_path: Path, extra: dict[str, Any], message: str) -> None:
    """One name space for probe sets and outcome audits, one outcome audit per model, and a bad kind is refused."""
    with pytest.raises(PolicyError) as info:
        files.load(folder_with(tmp_path, **extra))
    assert message in str(info.value)


def test_a_probe_set_may_say_its_kind(tmp_path: Path) -> None:
    """``kind: probe`` is a probe set, as a file without a kind is."""
    probe = yaml.safe_load((POLICIES / "fairness" / "cv_screening.yaml").read_text())
    loaded = files.load(folder_with(tmp_path, p={**probe, "kind": "probe", "name": "cv-again"}))
    assert "cv-again" in {e.probes.name for e in loaded.fairness}


@pytest.mark.parametrize(
    ("body", "path", "value", "rest"),
    [
        ({"metadata": {"group": "a", "tag": "x"}, "user": "u"}, "metadata.group", "a",
         {"metadata": {"tag": "x"}, "user": "u"}),
        ({"metadata": {"group": "a"}, "user": "u"}, "metadata.group", "a", {"user": "u"}),  # emptied: removed
        ({"group": 3}, "group", 3, {}),
        ({"metadata": "flat"}, "metadata.group", None, {"metadata": "flat"}),
        ({"user": "u"}, "metadata.group", None, {"user": "u"}),
        ({"a": {"b": {"c": "v", "d": 1}}}, "a.b.c", "v", {"a": {"b": {"d": 1}}}),
    ],
)  # fmt: skip
def test_take_removes_the_attribute_from_the_body(body: dict[str, Any], path: str, value: object,
                                                  rest: dict[str, Any]) -> None:  # fmt: skip
    """The attribute's value, and the body without it (the original left unchanged)."""
    before = yaml.safe_dump(body)
    assert take(body, path) == (value, rest)
    assert yaml.safe_dump(body) == before
