"""The HTML builder: escaping, embedded PNGs, tables, provenance; the page is self-contained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.html_checks import assert_figure_not_blank, decode_png, parse_report

from medattn.explain.plots import array_to_png
from medattn.report.html import HtmlReport, escape, png_data_uri, versions


def _gradient_png() -> bytes:
    img = np.zeros((20, 30, 3), np.uint8)
    img[..., 0] = np.arange(30, dtype=np.uint8)[None, :] * 8
    img[..., 2] = 200
    return array_to_png(img)


def test_page_embeds_figures_and_tables_and_escapes_text(tmp_path: Path) -> None:
    page = HtmlReport("slide <1> & co", subtitle='a "quoted" subtitle')
    png = _gradient_png()
    page.section("Figures", page.figure(png, "fig-gradient", "a gradient", caption="<b>not bold</b>"),
                 section_id="figures")
    page.section("Numbers", page.table(["name", "value", "crop"], [["a<b", 0.123456789, png], ["c", 3, ""]],
                                       table_id="numbers"))
    page.provenance("medattn explain a.pt b.h5 -o 'out dir'", {"model": {"name": "abmil"}, "note": "<x>"},
                    versions("cpu"))
    out = page.write(tmp_path / "sub" / "report.html")
    text = out.read_text(encoding="utf-8")
    assert "<b>not bold</b>" not in text and "&lt;b&gt;not bold&lt;/b&gt;" in text
    assert "<title>slide &lt;1&gt; &amp; co</title>" in text
    parsed = parse_report(out)
    pixels = assert_figure_not_blank(parsed, "fig-gradient")
    assert pixels.shape == (20, 30, 3) and pixels[0, 29, 0] == 29 * 8
    assert parsed.tables["numbers"] == [["name", "value", "crop"], ["a<b", "0.1235", ""], ["c", "3", ""]]
    assert parsed.images_in_tables["numbers"] == 1
    rows = dict((r[0], r[1]) for r in parsed.tables["versions"])
    assert rows["device"] == "cpu" and rows["medattn"] and rows["torch"] and rows["monai"] and rows["python"]
    assert "medattn explain a.pt b.h5 -o &#x27;out dir&#x27;" in text
    assert "&lt;x&gt;" in text  # config values are escaped too
    assert not list(out.parent.glob(".*tmp*"))  # written atomically, no temp file left


def test_png_data_uri_roundtrip_and_rejects_non_png() -> None:
    png = _gradient_png()
    assert decode_png(png_data_uri(png)).shape == (20, 30, 3)
    with pytest.raises(ValueError):
        png_data_uri(b"GIF89a....")
    assert escape(None) == "" and escape("'\"") == "&#x27;&quot;"
