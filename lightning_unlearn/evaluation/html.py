"""A report a person reads: one self-contained HTML file per takedown record, audit or verification.

Everything is inline (styles, and the figures as SVG drawn here), and the page's Content-Security-Policy forbids
loading anything, so it opens anywhere, offline, without the library, and no request leaves the file. Numbers in the
tables are written in full (``repr``), so the per-record table reads back to the values of ``unlearning.json``.

Example:
    >>> page = html_document("A title", ["one line"], [], [Table("t", ["a"], [[0.5]])])
    >>> "<td>0.5</td>" in page and "default-src 'none'" in page
    True
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lightning_unlearn.evaluation.report import Report, verdict_text
from lightning_unlearn.evaluation.report_types import AttackVerdict

#: the page's policy: nothing may be fetched, from anywhere (inline styles and SVG need no fetch)
POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; font-size: 13px; } td, th { border: 1px solid #ccc; padding: 2px 6px; }
th { background: #f3f3f3; } td { font-family: ui-monospace, monospace; }
.lines p { margin: 0.2em 0; white-space: pre-wrap; } figure { margin: 1em 0; } figcaption { color: #555; }
"""
WIDTH, HEIGHT, MARGIN = 720, 260, 44


@dataclass(frozen=True)
class Table:
    """A table of the page: ``caption``, column names and rows of values (floats written in full)."""

    caption: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]


def html_document(title: str, lines: Sequence[str], figures: Sequence[tuple[str, str]], tables: Sequence[Table]) -> str:
    """The page: a title, summary ``lines``, ``figures`` (caption, inline SVG) and ``tables``."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        '<div class="lines">' + "".join(f"<p>{html.escape(line)}</p>" for line in lines) + "</div>",
    ]
    for caption, svg in figures:
        parts.append(f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>")
    for table in tables:
        head = "".join(f"<th>{html.escape(column)}</th>" for column in table.columns)
        body = "".join("<tr>" + "".join(f"<td>{_cell(value)}</td>" for value in row) + "</tr>" for row in table.rows)
        parts.append(f"<h2>{html.escape(table.caption)}</h2><table><tr>{head}</tr>{body}</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bool) or value is None:
        return "" if value is None else ("yes" if value else "no")
    return html.escape(str(value))


def g_figure(before: Sequence[float], after: Sequence[float] | None, threshold: float) -> str:
    """SVG: each record's g (a fraction in [0, 1]) before (grey) and after (blue), records in order of g before,
    with the threshold as a dashed red line."""
    order = sorted(range(len(before)), key=lambda i: before[i])
    step = (WIDTH - 2 * MARGIN) / max(len(order), 1)
    marks = []
    for slot, i in enumerate(order):
        x = MARGIN + step * (slot + 0.5)
        marks.append(f'<circle cx="{x:.1f}" cy="{_y(before[i]):.1f}" r="3.5" fill="#999"/>')
        if after is not None:
            line = f'<line x1="{x:.1f}" y1="{_y(before[i]):.1f}" x2="{x:.1f}" y2="{_y(after[i]):.1f}" '
            marks.append(line + 'stroke="#bbb"/>')
            marks.append(f'<circle cx="{x:.1f}" cy="{_y(after[i]):.1f}" r="3.5" fill="#1f6fb4"/>')
    y = _y(threshold)
    marks.append(
        f'<line x1="{MARGIN}" y1="{y:.1f}" x2="{WIDTH - MARGIN}" y2="{y:.1f}" stroke="#c0392b" '
        'stroke-dasharray="6 4"/>'
        f'<text x="{WIDTH - MARGIN}" y="{y - 4:.1f}" text-anchor="end" font-size="11" fill="#c0392b">'
        f"threshold {threshold:.3f}</text>"
    )
    legend = "g before (grey), after (blue)" if after is not None else "g"
    return _svg(marks, "memorization g per record", legend)


def verdict_figure(verdicts: Mapping[str, AttackVerdict]) -> str:
    """SVG: per attack, the forget records that come back (red) and those over-forgotten (blue), out of all."""
    rows = list(verdicts.items())
    height = 12 + 26 * len(rows)
    span = WIDTH - 3 * MARGIN - 60
    marks = []
    for index, (attack, v) in enumerate(rows):
        y = 6 + 26 * index
        total = max(v["forget_records"], 1)
        back, low = span * v["back"] / total, span * v["over_forgotten"] / total
        marks.append(
            f'<text x="{MARGIN + 60}" y="{y + 14}" text-anchor="end" font-size="12">{html.escape(attack)}</text>'
        )
        marks.append(f'<rect x="{MARGIN + 66}" y="{y + 3}" width="{span}" height="16" fill="#eee"/>')
        marks.append(f'<rect x="{MARGIN + 66}" y="{y + 3}" width="{back:.1f}" height="16" fill="#c0392b"/>')
        marks.append(f'<rect x="{MARGIN + 66 + back:.1f}" y="{y + 3}" width="{low:.1f}" height="16" fill="#1f6fb4"/>')
        label = f"{v['back']} back, {v['over_forgotten']} over-forgotten of {v['forget_records']}"
        marks.append(f'<text x="{MARGIN + 72 + span}" y="{y + 15}" font-size="11">{label}</text>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH + 120}" height="{height}" role="img" '
        f'aria-label="verdict per attack">{"".join(marks)}</svg>'
    )


def _y(g: float) -> float:
    return HEIGHT - MARGIN - (HEIGHT - 2 * MARGIN) * min(max(g, 0.0), 1.0)


def _svg(marks: list[str], label: str, legend: str) -> str:
    axis = [f'<line x1="{MARGIN}" y1="{_y(0)}" x2="{MARGIN}" y2="{_y(1)}" stroke="#444"/>']
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        axis.append(
            f'<text x="{MARGIN - 6}" y="{_y(tick) + 4:.1f}" text-anchor="end" font-size="11">{tick:g}</text>'
            f'<line x1="{MARGIN}" y1="{_y(tick):.1f}" x2="{WIDTH - MARGIN}" y2="{_y(tick):.1f}" stroke="#eee"/>'
        )
    axis.append(f'<text x="{MARGIN}" y="{HEIGHT - 12}" font-size="11">{html.escape(legend)}</text>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{html.escape(label)}">{"".join(axis + marks)}</svg>'
    )


#: the per-record table of a takedown record: its columns, as in ``unlearning.json``'s ``records``
RECORD_COLUMNS = ("sample_id", "sha256", "g_before", "g_after", "nll_before", "nll_after", "document")


def record_html(record: Mapping[str, Any], summary: Sequence[str]) -> str:
    """The page of a takedown record (``unlearning.json``'s content), with its ``summary`` lines."""
    rows = record["records"]
    columns = [c for c in RECORD_COLUMNS if c in rows[0]] + (["text"] if "text" in rows[0] else [])
    figures = [
        (
            "Each forget record's g before and after unlearning, against the threshold (the holdout's 0.95 quantile)",
            g_figure([r["g_before"] for r in rows], [r["g_after"] for r in rows], record["threshold"]["value"]),
        )
    ]
    if record.get("verdict"):
        figures.append(("The verdict per attack: records back, and over-forgotten", verdict_figure(record["verdict"])))
    settings = [[key, value] for key, value in sorted(record.get("settings", {}).items())]
    evidence = [[f"weights {when}", digest] for when, digest in record.get("weights_sha256", {}).items()]
    evidence += [
        [f"{name} texts", f"{part['records']} records, sha256 {part['sha256']}"] for name, part in _splits(record)
    ]
    environment = record.get("environment", {})
    evidence += [[key, value] for key, value in environment.items() if key != "packages"]
    evidence += [[name, version] for name, version in environment.get("packages", {}).items()]
    tables = [
        Table(
            "Per record (SHA-256 of each text; the texts themselves stay out)",
            columns,
            [[r[c] for c in columns] for r in rows],
        ),
        Table("Evidence: hashes, versions, device and time", ["what", "value"], evidence),
        Table("Settings", ["setting", "value"], settings),
    ]
    return html_document(f"Takedown record: {record.get('method', record.get('module', ''))}", summary, figures, tables)


def _splits(record: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    data = record.get("data", {})
    return [(name, data[name]) for name in ("forget", "holdout", "retain") if name in data]


def report_html(report: Report, title: str = "Memorization audit") -> str:
    """The page of a memorization report (the audit's): per record g, p-value and flags, the verdict per attack."""
    summary = report.summary
    lines = [
        f"{summary['forget_samples']} records: g mean {summary['g_mean']:.3f}, max {summary['g_max']:.3f}; "
        f"{summary['above_threshold']} above the threshold {summary['threshold']:.3f}"
    ]
    if summary.get("verdict"):
        lines.append(verdict_text(summary["verdict"]))
    figures = [
        ("Each record's g against the threshold", g_figure([r["g"] for r in report.rows], None, summary["threshold"]))
    ]
    verdicts = summary.get("verdict")
    if verdicts:
        figures.append(("The verdict per attack: records back, and over-forgotten", verdict_figure(verdicts)))
    columns = [
        c
        for c in ("sample_id", "g", "nll", "p_value", "flagged", "over_forgotten", "above_threshold")
        if c in report.rows[0]
    ]
    table = Table("Per record", columns, [[row[c] for c in columns] for row in report.rows])
    return html_document(title, lines, figures, [table])
