"""The HTML report: self-contained (nothing it may fetch), every figure drawn, and its per-record table equal to
``unlearning.json``; loaded in a real headless browser (Debian's Chromium, which ``make test`` installs)."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from lightning_unlearn.cli import main
from lightning_unlearn.evaluation.html import POLICY, RECORD_COLUMNS, record_html
from lightning_unlearn.unlearning import summary_text

BLUE, RED = (0x1F, 0x6F, 0xB4), (0xC0, 0x39, 0x2B)  # the figures' "after" marks and the threshold line


class Page(HTMLParser):
    """The tables (rows of cell texts) and the SVG figures (their element counts) of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.svgs: list[int] = []
        self.sources: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.sources += [value for name, value in attrs if name in ("src", "href") and value]
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "svg":
            self.svgs.append(0)
        elif self.svgs and tag in ("circle", "line", "rect", "text"):
            self.svgs[-1] += 1

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None


def browser() -> str:
    found = shutil.which("chromium")
    assert found, "no chromium: `make test` installs Debian's (apt-get install chromium)"
    return found


def rendered(page: Path, tmp_path: Path) -> tuple[Page, Image.Image]:
    """The page's DOM after the browser loaded it, and a screenshot of it."""
    flags = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,2400"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    shot = tmp_path / "page.png"
    subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    parsed = Page()
    parsed.feed(dom.stdout)
    return parsed, Image.open(shot).convert("RGB")


def has_color(image: Image.Image, color: tuple[int, int, int]) -> bool:
    return any(count and pixel == color for count, pixel in image.getcolors(1 << 24))


@pytest.mark.slow
def test_the_takedown_report_loads_in_a_browser_with_its_figures_and_the_records_of_unlearning_json(
    unlearned, tmp_path
):
    record = json.loads((unlearned / "unlearned/unlearning.json").read_text())
    page = tmp_path / "report.html"
    page.write_text(record_html(record, summary_text(record).splitlines()), encoding="utf-8")
    source = page.read_text()
    assert f'content="{POLICY}"' in source and "default-src 'none'" in POLICY  # the browser may fetch nothing
    assert "://" not in source.replace('xmlns="http://www.w3.org/2000/svg"', "")  # and nothing names a URL
    dom, screenshot = rendered(page, tmp_path)
    assert not dom.sources
    g_marks, verdict_marks = dom.svgs  # a dot and a line per record and state; five marks per attack
    assert g_marks > 3 * len(record["records"]) and verdict_marks == 5 * len(record["verdict"])
    assert has_color(screenshot, BLUE) and has_color(screenshot, RED)  # drawn, not only in the DOM
    header, *rows = dom.tables[0]
    assert tuple(header) == RECORD_COLUMNS
    for cells, row in zip(rows, record["records"], strict=True):
        for column, cell in zip(header, cells, strict=True):
            expected = row[column]
            assert (float(cell) if isinstance(expected, float) else type(expected)(cell)) == expected, column


@pytest.mark.slow
def test_verify_and_audit_write_their_reports_and_nothing_on_bad_input(unlearned, tmp_path, capsys):
    verify = [
        "verify",
        "--model",
        str(unlearned / "unlearned"),
        "--record",
        str(unlearned / "unlearned/unlearning.json"),
        "--forget",
        str(unlearned / "testbed/forget.jsonl"),
        "--accelerator",
        "cpu",
        "--report",
    ]
    assert main([*verify, str(tmp_path / "verify.html")]) == 0
    dom, screenshot = rendered(tmp_path / "verify.html", tmp_path)
    assert len(dom.svgs) == 1 and has_color(screenshot, BLUE)
    assert [row[2:4] for row in dom.tables[0][1:]]  # g recorded and now, per record
    bad = [*verify[:4], str(tmp_path / "missing.json"), *verify[5:]]
    assert main([*bad, str(tmp_path / "bad.html")]) == 2 and not (tmp_path / "bad.html").exists()
    audit = ["audit", "--model", str(unlearned / "testbed/model"), "--data", str(unlearned / "testbed/forget.jsonl")]
    holdout = ["--holdout", str(unlearned / "testbed/holdout.jsonl"), "--accelerator", "cpu"]
    assert main([*audit, *holdout, "--report", str(tmp_path / "audit.html")]) == 0
    dom, _ = rendered(tmp_path / "audit.html", tmp_path)
    assert len(dom.svgs) == 2 and len(dom.tables[0]) == 1 + 16
    capsys.readouterr()
