"""``policies/controls.yaml``: which report sections hold the evidence for which control, and for whom each
section is written. Read when a report is generated; a malformed file fails the report, never a guess."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SECTIONS = ("inventory", "access_control", "privacy", "fairness", "operations", "integrity")
"""Every section a report can hold, in the order it presents them."""

TITLES = {
    "inventory": "Inventory", "access_control": "Access control", "privacy": "Privacy", "fairness": "Fairness",
    "operations": "Operations", "integrity": "Integrity",
}  # fmt: skip

Audience = Literal["everyone", "security"]


class ControlsError(ValueError):
    """The controls file cannot be read or names what a report does not hold."""


class Control(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=64)
    framework: str = Field(min_length=1)
    ref: str = Field(min_length=1)
    title: str = Field(min_length=1)
    sections: tuple[str, ...] = Field(min_length=1)

    @field_validator("sections")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [s for s in value if s not in SECTIONS]
        if unknown:
            raise ValueError(f"unknown section {unknown[0]!r} (one of {', '.join(SECTIONS)})")
        return value


class Controls(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    controls: tuple[Control, ...] = Field(min_length=1)
    sections: dict[str, Audience] = Field(default_factory=dict)

    @field_validator("sections")
    @classmethod
    def _known_sections(cls, value: dict[str, Audience]) -> dict[str, Audience]:
        unknown = [s for s in value if s not in SECTIONS]
        if unknown:
            raise ValueError(f"unknown section {unknown[0]!r} (one of {', '.join(SECTIONS)})")
        return value

    def audience(self, section: str) -> Audience:
        return self.sections.get(section, "everyone")


def load_controls(path: Path) -> Controls:
    """The controls file at ``path``; ``ControlsError`` names the file and the offending key."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ControlsError(f"{path}: {exc}") from None
    try:
        controls = Controls.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ControlsError(f"{path}: {where}: {first['msg']}") from None
    ids = [c.id for c in controls.controls]
    if len(set(ids)) != len(ids):
        raise ControlsError(f"{path}: controls: an id is used twice")
    return controls
