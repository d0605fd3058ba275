"""``gateway stats export``: a differentially private release, written as CSV or JSON.

The command is a client of a running gateway's ``GET /admin/stats``, with an API key: the release goes
through the same authorization (Casbin action ``report``), privacy budget, answer cache and ledger entry as
any other, in the name of the key's owner. It never reads the ledger itself, so it cannot release an exact
number, and an export is accounted like a dashboard's query.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import click
import httpx

from gateway._cli import api_client, api_error, ca_option, config_option, url_option


@click.group()
def stats() -> None:
    """Differentially private statistics over the ledger (docs/privacy.md)."""


def to_csv(answer: dict[str, Any]) -> str:
    """One row per group: the group's keys, the released value(s), and the release's privacy parameters."""
    privacy = answer["privacy"]
    out = io.StringIO()
    dims = list(answer["group_by"])
    first = answer["groups"][0]["value"] if answer["groups"] else None
    value_cols = list(first) if isinstance(first, dict) else ["value"]
    extra = ["accuracy_95"] if any("accuracy_95" in g for g in answer["groups"]) else []
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*dims, *value_cols, *extra, "metric", "from", "to", "epsilon", "delta", "mechanism",
                     "half_width_95", "accuracy_unit"])  # fmt: skip
    acc = privacy["accuracy"]
    for g in answer["groups"]:
        vals = [g["value"].get(c) for c in value_cols] if isinstance(g["value"], dict) else [g["value"]]
        writer.writerow([*(g[d] for d in dims), *vals, *(g.get(c) for c in extra), answer["metric"], answer["from"],
                         answer["to"], privacy["epsilon"], privacy["delta"], privacy["mechanism"],
                         acc["half_width"], acc["unit"]])  # fmt: skip
    return out.getvalue()


@stats.command("export")
@config_option
@click.option("--metric", required=True, help="requests, errors, fallbacks, tokens, latency_ms, denials, ...")
@click.option("--group-by", default="", help="Comma-separated: model, role, route, day, reason, entity, direction.")
@click.option("--from", "start", required=True, help="First UTC day, YYYY-MM-DD.")
@click.option("--to", "end", required=True, help="Last UTC day, YYYY-MM-DD (inclusive).")
@click.option("--epsilon", type=float, default=None, help="Epsilon to spend (default: the policy's per-query one).")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Default: stdout.")
@url_option
@ca_option
@click.option("--api-key", envvar="GATEWAY_API_KEY", required=True, help="An API key with `report` on /admin/stats "
              "(also GATEWAY_API_KEY).")  # fmt: skip
def stats_export(config_file: Path | None, metric: str, group_by: str, start: str, end: str,
                 epsilon: float | None, fmt: str, output: Path | None, url: str | None, ca_file: Path | None,
                 api_key: str) -> None:  # fmt: skip
    """Release one statistic with differential-privacy noise, spending the key owner's privacy budget."""
    params = {"metric": metric, "from": start, "to": end}
    if group_by:
        params["group_by"] = group_by
    if epsilon is not None:
        params["epsilon"] = repr(epsilon)
    try:
        with api_client(config_file, url, ca_file, api_key) as client:
            r = client.get("/admin/stats", params=params)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach the gateway: {exc}") from None
    if r.status_code != 200:
        raise api_error(r)
    answer = r.json()
    text = json.dumps(answer, indent=2) + "\n" if fmt == "json" else to_csv(answer)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
    b = answer["budget"]
    how = "from the cache, nothing spent" if answer["cached"] else "spent now"
    click.echo(f"released with epsilon={answer['privacy']['epsilon']:g} ({how}); remaining this period "
               f"({b['period']}): epsilon={b['remaining']['epsilon']:g}", err=True)  # fmt: skip
