"""The CSV rendering: every table of a report in one long-format file.

One row per cell: ``section, table, row, column, value``. A list of objects is a table (``row`` counts from
0); the section's plain values are the table ``fields`` (row 0); nested objects are flattened with dots
(``privacy.epsilon``). A spreadsheet pivots it back into tables; a script filters it by section and table.
"""

from __future__ import annotations

import csv
import io
from typing import Any

HEADER = ("section", "table", "row", "column", "value")


def _cells(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _cells(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, list):
        out.append((prefix, ";".join(str(v) for v in value)))
    else:
        out.append((prefix, "" if value is None else str(value)))


def _table(writer: Any, section: str, table: str, rows: list[Any]) -> None:
    for i, row in enumerate(rows):
        cells: list[tuple[str, str]] = []
        _cells("", row if isinstance(row, dict) else {"value": row}, cells)
        for column, value in cells:
            writer.writerow((section, table, i, column, value))


def _section(writer: Any, section: str, content: dict[str, Any], table: str = "fields") -> None:
    fields: list[tuple[str, str]] = []
    for key, value in content.items():
        name = key if table == "fields" else f"{table}.{key}"
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            _table(writer, section, name, value)
        elif isinstance(value, dict) and any(isinstance(v, list) and v and isinstance(v[0], dict)
                                             for v in value.values()):  # fmt: skip
            _section(writer, section, value, name)
        else:
            _cells(key if table == "fields" else name, value, fields)
    for column, value in fields:
        writer.writerow((section, "fields", 0, column, value))


def render_csv(body: dict[str, Any]) -> bytes:
    """The CSV bytes (UTF-8, ``\\n`` line ends) of a report body."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    head = {k: v for k, v in body.items() if k not in ("sections", "controls", "files")}
    _section(writer, "report", head)
    for name, content in body["sections"].items():
        _section(writer, name, content)
    _table(writer, "controls", "controls", body["controls"])
    return out.getvalue().encode()
