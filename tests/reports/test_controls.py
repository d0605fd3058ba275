"""``policies/controls.yaml``: the shipped mapping loads, and each kind of mistake is refused with the file and key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.reports.controls import SECTIONS, ControlsError, load_controls
from tests.conftest import POLICIES


def test_the_shipped_mapping_covers_the_controls_of_the_issue() -> None:
    """GDPR 5(1)(c), 25, 30, 32, EU AI Act 12, ISO/IEC 27001 logging and access control; every section used."""
    controls = load_controls(POLICIES / "controls.yaml")
    refs = {(c.framework, c.ref) for c in controls.controls}
    assert {("GDPR", "Art. 5(1)(c)"), ("GDPR", "Art. 25"), ("GDPR", "Art. 30"), ("GDPR", "Art. 32"),
            ("EU AI Act", "Art. 12")} <= refs  # fmt: skip
    assert sum(c.framework.startswith("ISO/IEC 27001") for c in controls.controls) >= 2
    assert {s for c in controls.controls for s in c.sections} == set(SECTIONS)
    assert controls.audience("privacy") == "everyone" and controls.audience("integrity") == "security"


@pytest.mark.parametrize(("text", "message"), [
    ("controls: []\n", "controls: Tuple should have at least 1 item"),
    ("controls:\n  - {id: a, framework: F, ref: R, title: T, sections: [gossip]}\n", "controls.0.sections"),
    ("controls:\n  - {id: a, framework: F, ref: R, title: T, sections: [privacy], owner: me}\n", "controls.0.owner"),
    ("controls:\n  - {id: a, framework: F, ref: R, title: T, sections: [privacy]}\n"
     "  - {id: a, framework: G, ref: S, title: U, sections: [privacy]}\n", "an id is used twice"),
    ("controls:\n  - {id: a, framework: F, ref: R, title: T, sections: [privacy]}\nsections: {privacy: public}\n",
     "sections.privacy"),
    ("controls: [\n", "controls.yaml"),
])  # fmt: skip
def test_mistakes_are_refused_with_the_key(tmp_path: Path, text: str, message: str) -> None:
    """Each malformed file raises ControlsError naming the file and the offending key."""
    path = tmp_path / "controls.yaml"
    path.write_text(text)
    with pytest.raises(ControlsError) as err:
        load_controls(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value)


def test_policy_check_validates_the_controls(tmp_path: Path) -> None:
    """``gateway policy check`` counts the controls and fails on a broken controls.yaml."""
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    ok = CliRunner().invoke(main, ["policy", "check", str(folder)])
    assert ok.exit_code == 0 and "7 report controls" in ok.output, ok.output
    (folder / "controls.yaml").write_text("controls: []\n")
    bad = CliRunner().invoke(main, ["policy", "check", str(folder)])
    assert bad.exit_code == 1 and "controls.yaml: controls" in bad.output
