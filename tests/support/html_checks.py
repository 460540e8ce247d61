"""Parse a self-contained HTML report and check its figures and tables (for the report/explain tests)."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image


class ReportParser(HTMLParser):
    """Collects ``<figure id>`` → the ``<img>`` inside it, tables by id (rows of cell texts), every URL."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, dict[str, str]] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.urls: list[str] = []
        self.tags: list[str] = []
        self.images_in_tables: dict[str, int] = {}
        self._figure: str | None = None
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        self.urls += [v for k, v in a.items() if k in ("src", "href", "action", "srcset", "data")]
        if tag == "figure":
            self._figure = a.get("id", "")
        elif tag == "img" and self._figure is not None:
            self.figures[self._figure] = a
        elif tag == "img" and self._table is not None:
            self.images_in_tables[self._table] = self.images_in_tables.get(self._table, 0) + 1
        elif tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._figure = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse_report(path: Path) -> ReportParser:
    """Parse ``path`` and assert it is self-contained (no scripts, links or network URLs)."""
    text = path.read_text(encoding="utf-8")
    parser = ReportParser()
    parser.feed(text)
    assert "script" not in parser.tags and "link" not in parser.tags and "iframe" not in parser.tags
    assert all(u.startswith("data:image/png;base64,") for u in parser.urls), [u[:40] for u in parser.urls]
    assert "http://" not in text and "https://" not in text
    return parser


def decode_png(uri: str) -> np.ndarray:
    """The pixels of a ``data:image/png;base64`` URI as an array."""
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    data = base64.b64decode(uri[len(prefix):], validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def assert_figure_not_blank(parser: ReportParser, figure_id: str) -> np.ndarray:
    """The figure exists, has alt text, and its image is not one uniform colour; returns its pixels."""
    assert figure_id in parser.figures, f"figure {figure_id} missing; have {sorted(parser.figures)}"
    img = parser.figures[figure_id]
    assert img.get("alt"), f"figure {figure_id} has no alt text"
    pixels = decode_png(img["src"])
    assert pixels.reshape(-1, 3).std(0).max() > 5.0, f"figure {figure_id} is blank"
    return pixels
