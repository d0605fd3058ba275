"""Policy folders: every way a security team's edit can break is refused with file, line and reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.authz.store import build
from gateway.cli import main
from gateway.errors import PolicyError

POLICIES = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    dst = tmp_path / "policies"
    shutil.copytree(POLICIES, dst)
    return dst


def test_shipped_policy_is_valid_and_passes_its_tests() -> None:
    """The policy in the repository loads and passes its own tests."""
    engine = build(POLICIES, 1)
    assert engine.run_tests() == [] and len(engine.files.tests) >= 10


def _edit(folder: Path, name: str, text: str | bytes) -> None:
    path = folder / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


GOOD = (POLICIES / "policy.csv").read_text()
ALERTS = (POLICIES / "alerts.yaml").read_text()
N = GOOD.count("\n") + 1  # the number of a line appended to the good file
LOAN = (POLICIES / "fairness" / "loan_prescreening.yaml").read_text()
LOAN_FILE = "fairness/loan_prescreening.yaml"


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("policy.csv", GOOD + "p, role:user, model:x, infer\n", f"policy.csv:{N}: a p line needs 4 fields"),
        (
            "policy.csv",
            GOOD + "p, role:user, model:x, infer, allow, extra\n",
            f"policy.csv:{N}: a p line needs 4 fields",
        ),
        ("policy.csv", GOOD + "pp, role:user, model:x, infer, allow\n", f"policy.csv:{N}: unknown line type 'pp'"),
        ("policy.csv", GOOD + "p, role:user, model:x, infr, allow\n", "unknown action 'infr'"),
        ("policy.csv", GOOD + "p, role:user, model:llama-*-chat, infer, allow\n", "with * only at the end"),
        ("policy.csv", GOOD + "p, role:user, model:x, infer, permit\n", "effect must be allow or deny"),
        ("policy.csv", GOOD + "p, admin, model:x, infer, allow\n", "must be role:NAME, user:ID or apikey:ID"),
        ("policy.csv", GOOD + "g, role:a\n", "a g line needs 2 fields"),
        ("policy.csv", GOOD + "p, role:user, model:e5-*, embed, allow\n", "duplicate rule"),
        ("policy.csv", "", "the policy allows nothing"),
        ("policy.csv", "# all comments\n", "the policy allows nothing"),
        ("policy.csv", GOOD[: len(GOOD) // 3], "the last line has no newline: is the file truncated?"),
        # cut at a line boundary: it parses, but the policy's own tests catch the lost rules
        ("policy.csv", GOOD[: GOOD.index("# administrators")], "tests.yaml: 1 policy test(s) failed: admins"),
        ("policy.csv", b"\xff\xfe\x00garbage", "not UTF-8"),
        ("model.conf", "[request_definition]\nr = sub, obj, act\n", "model.conf"),
        ("limits.yaml", "default:\n  max_tokens: -5\n", "limits.yaml: default.max_tokens"),
        ("limits.yaml", "default: {stream: true}\nroles:\n  user: {max_tokenz: 5}\n", "roles.user.max_tokenz"),
        (
            "tests.yaml",
            "tests:\n  - name: x\n    roles: [user]\n    object: model:smollm2-1\n"
            "    action: infer\n    expect: deny\n",
            "1 policy test(s) failed: x: expected deny, got allow",
        ),
        ("tests.yaml", "tests: []\n", "tests.yaml: tests"),
        ("privacy.yaml", "budget: {}\n", "privacy.yaml: budget.default: Field required"),
        ("privacy.yaml", "budget: {default: {epsilon: 0.1234567}}\n", "not a whole multiple of 1/1000000"),
        (
            "privacy.yaml",
            "budget: {default: {epsilon: 1}}\nquery: {epsilon: 2, max_epsilon: 1}\n",
            "epsilon (2.0) is above max_epsilon (1.0)",
        ),
        ("privacy.yaml", "budget: {default: {epsilon: 1}, period: year}\n", "privacy.yaml: budget.period"),
        (
            "privacy.yaml",
            "budget: {default: {epsilon: 1}}\nbounds: {requests_per_day: 0}\n",
            "privacy.yaml: bounds.requests_per_day",
        ),
        (
            "privacy.yaml",
            "budget: {default: {epsilon: 1}, roles: {role:analyst: {epsilon: 1}}}\n",
            "roles are plain names",
        ),
        (
            "privacy.yaml",
            "budget: {default: {epsilon: 1}}\nlatency: {min_ms: 10, max_ms: 5}\n",
            "max_ms (5) must be above min_ms (10)",
        ),
        (
            "alerts.yaml",
            ALERTS.replace("signal: error_rate", "signal: eror_rate"),
            "alerts.yaml: rules.5: signal: unknown signal 'eror_rate'",
        ),
        (
            "alerts.yaml",
            ALERTS.replace("signal: gpu_utilization", "signal: error_rate"),
            "rules.0: level: error_rate is a system signal, not hardware",
        ),
        (
            "alerts.yaml",
            ALERTS.replace("    above: 0.01\n", "    above: 0.01\n    below: 0.5\n"),
            "rules.5: a rule needs exactly one of above, below, deviation and drop, not ['above', 'below']",
        ),
        (
            "alerts.yaml",
            ALERTS.replace("window: 5m", "window: 5 minutes"),
            "'5 minutes' is not a duration such as 30s, 5m, 1h or 7d",
        ),
        (
            "alerts.yaml",
            ALERTS.replace("deviation: {sigmas: 2,", "deviation: {sigma: 2,"),
            "alerts.yaml: rules.1.deviation.sigmas: Field required",
        ),
        (
            "alerts.yaml",
            ALERTS.replace("name: AccuracyDrop", "name: APIErrorRateHigh"),
            "alerts.yaml: rules: duplicate names: APIErrorRateHigh",
        ),
        ("alerts.yaml", ALERTS.replace("name: AccuracyDrop", "name: accuracy-drop"), "alerts.yaml: rules.3.name"),
        ("alerts.yaml", ALERTS.replace("severity: critical", "severity: page"), "alerts.yaml: rules.3.severity"),
        (
            "alerts.yaml",
            "rules:\n  - {name: X, level: system, signal: error_rate, above: 1}\n",
            "alerts.yaml: rules.0.severity: Field required",
        ),
        (
            LOAN_FILE,
            LOAN.replace("min_probes: 30", "min_probes: 40"),
            f"{LOAN_FILE}: 3 templates x 12 cases = 36 probes, fewer than thresholds.min_probes (40)",
        ),
        (
            LOAN_FILE,
            LOAN.replace("Credit history: {credit}", "Credit history: {credit_history}"),
            f"{LOAN_FILE}: cases.0: no value for {{credit_history}}, which a template uses",
        ),
        (
            LOAN_FILE,
            LOAN.replace('["yes", approve', "[yes, approve"),
            f"{LOAN_FILE}: outcome.yes_no.yes_words: YAML reads a bare yes",
        ),
        (
            LOAN_FILE,
            LOAN.replace("Greg Baker", "Emily Walsh"),
            f"{LOAN_FILE}: attributes.ethnicity: groups.white.2: the same value is listed under 'white'",
        ),
        (LOAN_FILE, LOAN.replace("every: 7d", "cron: 0 3 * * 8"), f"{LOAN_FILE}: schedule.cron: day of week '8'"),
        (LOAN_FILE, LOAN.replace("kind: yes_no", "kind: yes-no"), f"{LOAN_FILE}: outcome: Input tag 'yes-no'"),
        (
            LOAN_FILE,
            LOAN.replace("  - id: officer-note", "  - id: officer-note\n    temperature: 0"),
            f"{LOAN_FILE}: templates.1.temperature: Extra inputs are not permitted",
        ),
        ("fairness/copy.yaml", LOAN, "is also the name of fairness/copy.yaml"),
        ("fairness/new.yml", LOAN, "fairness/new.yml: probe sets are read from *.yaml files only"),
        (LOAN_FILE, "name: [\n", f"{LOAN_FILE}:2: invalid YAML"),
    ],
)
def test_broken_files_are_rejected(folder: Path, name: str, content: str | bytes, expected: str) -> None:
    """Each broken edit is refused, naming the file (and line where there is one) and the reason."""
    _edit(folder, name, content)
    with pytest.raises(PolicyError) as info:
        build(folder, 2)
    assert expected in str(info.value)


def test_missing_files(folder: Path) -> None:
    """A missing policy file is refused, not treated as empty."""
    (folder / "policy.csv").unlink()
    with pytest.raises(PolicyError, match=r"no policy\.csv"):
        build(folder, 2)
    shutil.copy(POLICIES / "policy.csv", folder / "policy.csv")
    (folder / "tests.yaml").unlink()
    with pytest.raises(PolicyError, match=r"tests\.yaml: cannot read"):
        build(folder, 2)


def test_policy_d_folder(folder: Path) -> None:
    """Rules may be split over policy.d/*.csv; their lines are numbered per file."""
    (folder / "policy.d").mkdir()
    (folder / "policy.d" / "10-extra.csv").write_text("p, role:user, model:qwen-*, infer, allow\np, role:x\n")
    with pytest.raises(PolicyError, match=r"10-extra.csv:2: a p line"):
        build(folder, 2)
    (folder / "policy.d" / "10-extra.csv").write_text("p, role:user, model:qwen-*, infer, allow\n")
    assert build(folder, 2).files.digests["policy.d/10-extra.csv"]


def test_probe_sets_are_part_of_the_policy(folder: Path) -> None:
    """Probe sets load with the folder, their digests are in the policy's, and an edit changes its version."""
    first = build(folder, 2).files
    assert [e.probes.name for e in first.fairness] == ["cv-screening", "loan-prescreening"]
    assert first.digests[LOAN_FILE] == first.fairness[1].digest
    _edit(folder, LOAN_FILE, LOAN.replace("max_tokens: 8", "max_tokens: 12"))
    second = build(folder, 3).files
    assert second.fairness[1].probes.sampling.max_tokens == 12 and second.digest != first.digest
    shutil.rmtree(folder / "fairness")
    assert build(folder, 4).files.fairness == ()  # no probe sets is a valid policy


def test_policy_cli(folder: Path) -> None:
    """gateway policy check and test succeed on a good folder and exit 1 with the reason on a bad one."""
    runner = CliRunner()
    ok = runner.invoke(main, ["policy", "check", str(folder)])
    assert ok.exit_code == 0 and "OK" in ok.output
    assert "2 probe sets, 1 outcome audits, 9 alert rules" in ok.output  # the shipped folder
    tested = runner.invoke(main, ["policy", "test", str(folder)])
    assert tested.exit_code == 0 and "policy tests pass" in tested.output
    _edit(folder, "policy.csv", GOOD + "p, role:user, model:x, infr, allow\n")
    bad = runner.invoke(main, ["policy", "check", str(folder)])
    assert bad.exit_code == 1 and f"policy.csv:{N}: unknown action 'infr'" in bad.output
    _edit(folder, "policy.csv", GOOD.replace("p, role:contractor, model:llama-guard-*, infer, deny\n", ""))
    failing = runner.invoke(main, ["policy", "test", str(folder)])
    assert failing.exit_code == 1 and "FAIL  contractors never reach the safety classifier" in failing.output
