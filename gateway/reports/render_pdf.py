"""The PDF rendering, for people: a cover page, a summary, one part per section, the controls, page numbers.

Laid out with reportlab's platypus; charts (fairness selection rates with their intervals as error bars, and
each fairness metric across model versions) are drawn with matplotlib's Agg backend into PNGs in memory.
matplotlib is imported here, lazily (it costs about a second), with the Agg canvas set on each figure
explicitly, and told to keep its cache in a temporary folder, never in $HOME.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import cm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Flowable, Image, PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

_STYLES = getSampleStyleSheet()
_SMALL = ParagraphStyle("small", parent=_STYLES["BodyText"], fontSize=8, leading=10)
_MAX_ROWS = 200  # longer tables are cut in the PDF (the JSON and CSV hold every row)
_WIDTH = A4[0] - 4 * cm  # the text width between the 2 cm margins


def _figure(width: float, height: float) -> tuple[Any, Any]:
    """A figure on its own Agg canvas, and its axes. matplotlib's object API, not pyplot: no global state, so
    a render in a worker thread cannot interfere with another."""
    if "MPLCONFIGDIR" not in os.environ:  # matplotlib keeps a font cache there: never in $HOME on a server or in CI
        os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="gateway-mpl-")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _p(text: Any, style: ParagraphStyle = _STYLES["BodyText"]) -> Paragraph:
    return Paragraph(escape(str(text)), style)


def _table(header: list[str], rows: list[list[Any]]) -> Flowable:
    cut = [[_cell(v) for v in r] for r in rows[:_MAX_ROWS]]
    data = [[_p(h, _SMALL) for h in header]] + [[_p(v, _SMALL) for v in r] for r in cut]
    if len(rows) > len(cut):
        more = _p(f"... {len(rows) - len(cut)} more rows in the JSON and CSV", _SMALL)
        data.append([more] + [""] * (len(header) - 1))
    # Column widths in proportion to their longest text (capped), so that no column is squeezed to a letter.
    longest = [max([len(str(h)), *(min(len(r[i]), 40) for r in cut)]) for i, h in enumerate(header)]
    weights = [max(w, 4) for w in longest]
    widths = [_WIDTH * w / sum(weights) for w in weights]
    t = Table(data, colWidths=widths, repeatRows=1, hAlign="LEFT")
    t.setStyle(
        TableStyle(
            [
                ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                ("BACKGROUND", (0, 0), (-1, 0), colors.whitesmoke),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ]
        )
    )
    return t


def _cell(value: Any) -> str:
    """A table cell: digests shortened, timestamps to the second, mappings summarized (the JSON has them whole)."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return f"{len(value)} entries" if len(value) > 3 else "; ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value[:10]) + (" ..." if len(value) > 10 else "")
    text = str(value)
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return text[:12] + "..."
    if len(text) > 20 and text[4:5] == "-" and text[10:11] == "T":
        return text[:19].replace("T", " ")
    return _short(text)


def _png(fig: Any) -> Image:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    w, h = fig.get_size_inches()
    buf.seek(0)
    return Image(buf, width=15 * cm, height=15 * cm * h / w)


def _rate_chart(audit: dict[str, Any]) -> Image:
    rates = audit["selection_rates"]
    fig, ax = _figure(7, 3)
    labels = [f"{r['attribute']}={r['group']}" if r["attribute"] else str(r["group"]) for r in rates]
    values = [r["value"] for r in rates]
    err = [[max(0.0, r["value"] - r["low"]) for r in rates], [max(0.0, r["high"] - r["value"]) for r in rates]]
    ax.bar(range(len(rates)), values, yerr=err, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(rates)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("selection rate")
    ax.set_ylim(0, 1)
    ax.set_title(f"{audit['name']} on {audit['model']}: selection rate per group (bootstrap interval)", fontsize=8)
    return _png(fig)


def _trend_chart(series: dict[str, Any]) -> Image:
    pts = series["points"]
    fig, ax = _figure(7, 2.5)
    x = list(range(len(pts)))
    vals = [p["value"] for p in pts]
    lows = [p["value"] - p["low"] if p["low"] is not None else 0.0 for p in pts]
    highs = [p["high"] - p["value"] if p["high"] is not None else 0.0 for p in pts]
    ax.errorbar(x, vals, yerr=[lows, highs], marker="o", capsize=3)
    ax.set_xticks(x, [str(p["version"] or "?") for p in pts], fontsize=7)
    ax.set_xlabel("model version (in the order audited)")
    ax.set_title(series["series"], fontsize=8)
    return _png(fig)


def _released(name: str, rel: dict[str, Any]) -> list[Flowable]:
    out: list[Flowable] = [Paragraph(escape(name.replace("_", " ").capitalize()), _STYLES["Heading3"])]
    if not rel["released"]:
        return [*out, _p(f"Not released: {rel['reason']}")]
    keys = [k for k in rel["groups"][0] if k != "value"] if rel["groups"] else []
    rows = [[*(g[k] for k in keys), g["value"]] for g in rel["groups"]]
    p, b = rel["privacy"], rel["budget"]
    note = (
        f"Differentially private: epsilon {p['epsilon']}, delta {p['delta']}, {p['mechanism']}; with "
        f"{p['accuracy']['confidence']:.0%} confidence each value is within {_number(p['accuracy']['half_width'])} "
        f"of the true one. Budget of {b['consumer']} left for {b['period']}: epsilon {b['remaining']['epsilon']}."
    )
    return [*out, _table([*keys, "value (noisy)"], rows), _p(note, _SMALL)]


def _section(name: str, s: dict[str, Any]) -> list[Flowable]:
    f: list[Flowable] = [Paragraph(escape(s["title"]), _STYLES["Heading1"]),
                         _p(f"Written for: {s['audience']}.", _SMALL)]  # fmt: skip
    for key, value in s.items():
        if key in ("title", "audience"):
            continue
        if isinstance(value, dict) and "released" in value:
            f += _released(key, value)
        elif key == "audits":
            f.append(Paragraph("Audits", _STYLES["Heading3"]))
            if not value:
                f.append(_p("No fairness audit finished in this period."))
            for a in value:
                f.append(
                    _p(
                        f"{a['name']} ({a['kind']}) on {a['model']} version {a['version']}: {a['status']}, "
                        f"finished {a['finished_at']}, requested by {a['requested_by']}"
                    )
                )
                f.append(_table(["attribute", "metric", "status", "threshold", "value", "low", "high"],
                                [[c["attribute"], c["metric"], c["status"], c["threshold"], c["value"], c["low"],
                                  c["high"]] for c in a["checks"]]))  # fmt: skip
                if a["selection_rates"]:
                    f.append(_rate_chart(a))
        elif key == "trends":
            f.append(Paragraph("Trends across model versions", _STYLES["Heading3"]))
            f += [_trend_chart(t) for t in value if len(t["points"]) > 0][:12]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            f.append(Paragraph(escape(key.replace("_", " ").capitalize()), _STYLES["Heading3"]))
            cols = list(dict.fromkeys(k for v in value for k in v))
            f.append(_table(cols, [[_short(v.get(c)) for c in cols] for v in value]))
        elif isinstance(value, dict) and value:
            f.append(Paragraph(escape(key.replace("_", " ").capitalize()), _STYLES["Heading3"]))
            f.append(_table(["item", "value"], [[k, v] for k, v in value.items()]))
        else:
            f.append(_p(f"{key.replace('_', ' ').capitalize()}: {_cell(value) if value not in ([], {}) else 'none'}"))
        f.append(Spacer(1, 0.2 * cm))
    return f


def _number(value: Any) -> str:
    """A half-width or similar estimate to four significant digits (``None`` when there is none)."""
    return "none" if value is None else f"{float(value):.4g}"


def _short(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= 300 else text[:297] + "..."


def _footer(canvas: Any, doc: Any) -> None:
    canvas.saveState()
    canvas.setFont("Helvetica", 8)
    canvas.drawString(2 * cm, 1.2 * cm, doc.title)
    canvas.restoreState()


class _NumberedCanvas(Canvas):  # type: ignore[misc]  # reportlab has no type hints
    """Writes "Page N of M" on every page once M is known: pages are kept until ``save``, then drawn."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pages: list[dict[str, Any]] = []

    def showPage(self) -> None:  # reportlab calls it so
        self._pages.append(dict(self.__dict__))
        self._startPage()

    def save(self) -> None:
        for state in self._pages:
            self.__dict__.update(state)
            self.setFont("Helvetica", 8)
            self.drawRightString(A4[0] - 2 * cm, 1.2 * cm, f"Page {self._pageNumber} of {len(self._pages)}")
            super().showPage()
        super().save()


def render_pdf(body: dict[str, Any]) -> bytes:
    """The PDF bytes of a report body."""
    period = f"{body['period']['from']} to {body['period']['to']}"
    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, title=f"Compliance report {body['id']}", author="llm-governance-gateway",
                            leftMargin=2 * cm, rightMargin=2 * cm, topMargin=2 * cm, bottomMargin=2 * cm)  # fmt: skip
    story: list[Flowable] = [
        Spacer(1, 6 * cm), Paragraph("Compliance report", _STYLES["Title"]),
        _p(f"Period: {period} (UTC, inclusive)"), _p(f"Report id: {body['id']}"),
        _p(f"Generated at {body['generated_at']} for {body['requested_by']}"),
        _p(f"Gateway {body['gateway']['version']}, log {body['gateway']['origin']}"),
        Spacer(1, 1 * cm),
        _p("This PDF's SHA-256 is recorded in the signed JSON report, whose digest is in the gateway's audit "
           "ledger (entry report.created). Verify with: gateway report verify REPORT.json --pdf REPORT.pdf", _SMALL),
        PageBreak(), Paragraph("Summary", _STYLES["Heading1"]),
    ]  # fmt: skip
    if body["empty"]:
        story.append(_p("The ledger holds no entries in this period: there is no activity to report."))
    story.append(_table(["item", "value"], [[k.replace("_", " "), _short(v)] for k, v in body["summary"].items()]))
    for name, section in body["sections"].items():
        story += [PageBreak(), *_section(name, section)]
    story += [PageBreak(), Paragraph("Mapping to controls", _STYLES["Heading1"]),
              _table(["control", "framework", "reference", "requirement", "evidence in sections"],
                     [[c["id"], c["framework"], c["ref"], c["title"], ", ".join(c["sections"])]
                      for c in body["controls"]])]  # fmt: skip
    doc.build(story, onFirstPage=_footer, onLaterPages=_footer, canvasmaker=_NumberedCanvas)
    return buf.getvalue()
