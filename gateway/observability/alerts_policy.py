"""``policies/alerts.yaml``: the alert rules the gateway evaluates itself, and exports for Prometheus.

Security and operations teams own this file. It is validated with the rest of the policy folder, at start and
on every reload; a bad edit is rejected with its file, key and reason while the old rules keep running. A rule
is declarative, never code: a signal from a closed catalog (``signals.SIGNALS``), a window, one condition, a
``for`` duration, a severity and the text a person on call reads:

    - name: APIErrorRateHigh
      level: system
      signal: error_rate          # share of API answers that are 5xx
      window: 5m
      above: 0.01
      for: 5m
      severity: critical
      description: More than 1% of API requests fail with a server error.
      runbook: docs/operations.md#apierrorratehigh

Conditions: ``above: X`` or ``below: X`` (the signal over the window), ``deviation: {sigmas: K, baseline: D}``
(more than K standard deviations from its mean over the last D), or ``drop: {by: X, baseline: D}`` (more than X
below its mean over the last D).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from gateway.observability.signals import SIGNALS

_DURATION = re.compile(r"^([0-9]+)(ms|s|m|h|d)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def seconds(duration: str) -> float:
    """``"5m"`` -> 300.0 (the units of Prometheus durations: ms, s, m, h, d)."""
    m = _DURATION.match(duration)
    if m is None:
        raise ValueError(f"{duration!r} is not a duration such as 30s, 5m, 1h or 7d")
    return int(m.group(1)) * _UNIT_S[m.group(2)]


def _duration(value: str) -> str:
    seconds(value)
    return value


Duration = Annotated[str, AfterValidator(_duration)]
Level = Literal["hardware", "model", "business", "system"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Deviation(_Strict):
    sigmas: float = Field(gt=0, le=10)
    baseline: Duration
    """The rolling window whose mean and standard deviation the signal is compared with."""
    min_samples: int = Field(10, ge=3)
    """No alert until the baseline holds this many evaluations."""


class Drop(_Strict):
    by: float = Field(gt=0)
    """How far below its baseline mean the signal may fall (in the signal's unit: 0.03 is 3 points of accuracy)."""
    baseline: Duration


class AlertRule(_Strict):
    name: str = Field(pattern=r"^[A-Z][A-Za-z0-9]{0,63}$")
    """The alert's name (Prometheus ``alertname``)."""
    level: Level
    signal: str
    window: Duration = "5m"
    """How much history one value of the signal covers (the range of a rate, or the gauge average)."""
    above: float | None = None
    below: float | None = None
    deviation: Deviation | None = None
    drop: Drop | None = None
    for_: Duration = Field("0s", alias="for")
    """How long the condition must hold before the alert fires."""
    severity: Literal["info", "warning", "critical"]
    description: str = Field(min_length=1)
    runbook: str = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> AlertRule:
        signal = SIGNALS.get(self.signal)
        if signal is None:
            raise ValueError(f"signal: unknown signal {self.signal!r} (one of {', '.join(sorted(SIGNALS))})")
        if signal.level != self.level:
            raise ValueError(f"level: {self.signal} is a {signal.level} signal, not {self.level}")
        set_ = [k for k in ("above", "below", "deviation", "drop") if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(f"a rule needs exactly one of above, below, deviation and drop, not {set_ or 'none'}")
        return self

    @property
    def window_s(self) -> float:
        return seconds(self.window)

    @property
    def for_s(self) -> float:
        return seconds(self.for_)

    @property
    def baseline_s(self) -> float:
        cond = self.deviation or self.drop
        return seconds(cond.baseline) if cond is not None else 0.0

    def condition(self) -> str:
        """The condition in words, for logs, the ledger and messages."""
        if self.above is not None:
            return f"{self.signal} over {self.window} > {self.above:g}"
        if self.below is not None:
            return f"{self.signal} over {self.window} < {self.below:g}"
        if self.deviation is not None:
            d = self.deviation
            return f"{self.signal} over {self.window} more than {d.sigmas:g} sigma from its mean over {d.baseline}"
        assert self.drop is not None
        return f"{self.signal} more than {self.drop.by:g} below its mean over {self.drop.baseline}"


class AlertPolicy(_Strict):
    rules: tuple[AlertRule, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> AlertPolicy:
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rules: duplicate names: {', '.join(dupes)}")
        return self
