"""A small builder for self-contained HTML reports.

A report is one static page: every figure is a PNG embedded as a ``data:image/png;base64`` URI, the
style sheet is inline, and there are no scripts, ``<link>`` elements or external URLs, so the page
opens the same offline, from an e-mail attachment or from an archive. Every piece of text that comes
from data (file names, config values, class names) goes through :func:`escape`.

>>> page = HtmlReport("slide_001")
>>> page.section("Prediction", page.table(["output", "value"], [["p_tumour", "0.93"]], table_id="outputs"))
>>> page.write("report.html")
"""

from __future__ import annotations

import base64
import html
import json
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medattn.io.atomic import atomic_write_text

__all__ = ["HtmlReport", "escape", "flatten", "png_data_uri", "versions"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #1f2328; padding: 0 1em; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 1.6em; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { font-size: 90%; color: #57606a; max-width: 520px; }
table { border-collapse: collapse; margin: .5em 0; font-size: 92%; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: middle; }
th { background: #f6f8fa; }
td img { display: block; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 85%; border: 1px solid #d0d7de; }
.note { color: #57606a; font-size: 92%; }
"""


def escape(value: Any) -> str:
    """``value`` as text, HTML-escaped (quotes included)."""
    return html.escape("" if value is None else str(value), quote=True)


def png_data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URI for PNG bytes (ValueError if they are not a PNG)."""
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError("not PNG data")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def versions(device: str | None = None) -> dict[str, str]:
    """medattn, torch, monai, numpy and Python versions, the platform and (if given) the device."""
    import monai
    import numpy
    import torch

    from medattn import __version__

    out = {"medattn": __version__, "torch": torch.__version__, "monai": monai.__version__,
           "numpy": numpy.__version__, "python": sys.version.split()[0], "platform": platform.platform()}
    if device is not None:
        out["device"] = device
    return out


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b": value}``; ``{"mean": m, "std": s}`` and ``[m, s]`` pairs as ``"m ± s"``."""
    if isinstance(data, Mapping):
        if set(data) == {"mean", "std"} and all(isinstance(v, (int, float)) for v in data.values()):
            return {prefix: f"{data['mean']:.4g} ± {data['std']:.4g}"}
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if (isinstance(data, (list, tuple)) and len(data) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data)):
        return {prefix: f"{data[0]:.4g} ± {data[1]:.4g}"}
    return {prefix: data}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return escape(f"{value:.4g}")
    if isinstance(value, bytes):  # a PNG thumbnail inside a table cell
        return f'<img src="{png_data_uri(value)}" alt="patch crop">'
    return escape(value)


class HtmlReport:
    """An HTML page assembled section by section; :meth:`render` gives the text, :meth:`write` a file.

    Args:
        title: the page title and top heading.
        subtitle: an optional line under the heading.
    """

    def __init__(self, title: str, subtitle: str | None = None) -> None:
        self.title = title
        self.subtitle = subtitle
        self.parts: list[str] = []

    # --- building blocks (return HTML fragments) --------------------------------------------------
    @staticmethod
    def figure(png: bytes, figure_id: str, alt: str, caption: str | None = None) -> str:
        """An embedded PNG figure with ``id`` and ``alt`` (tests and screen readers find it by them)."""
        cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
        return (f'<figure id="{escape(figure_id)}"><img src="{png_data_uri(png)}" alt="{escape(alt)}">'
                f"{cap}</figure>")

    @staticmethod
    def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], table_id: str | None = None) -> str:
        """A table; floats are shown with 4 significant digits, ``bytes`` cells as embedded PNGs."""
        ident = f' id="{escape(table_id)}"' if table_id else ""
        head = "".join(f"<th>{escape(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
        return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    @staticmethod
    def key_values(items: Mapping[str, Any], table_id: str | None = None) -> str:
        """A two-column table of ``key: value`` pairs."""
        ident = f' id="{escape(table_id)}"' if table_id else ""
        body = "".join(f"<tr><th>{escape(k)}</th><td>{_cell(v)}</td></tr>" for k, v in items.items())
        return f"<table{ident}><tbody>{body}</tbody></table>"

    @staticmethod
    def paragraph(text: str, css_class: str | None = None) -> str:
        """A paragraph of (escaped) text."""
        cls = f' class="{escape(css_class)}"' if css_class else ""
        return f"<p{cls}>{escape(text)}</p>"

    @staticmethod
    def preformatted(text: str, block_id: str | None = None) -> str:
        """A ``<pre>`` block of (escaped) text."""
        ident = f' id="{escape(block_id)}"' if block_id else ""
        return f"<pre{ident}>{escape(text)}</pre>"

    # --- page assembly ---------------------------------------------------------------------------
    def section(self, heading: str, *fragments: str, section_id: str | None = None) -> None:
        """Append a ``<section>`` with an ``<h2>`` heading and the given fragments."""
        ident = f' id="{escape(section_id)}"' if section_id else ""
        self.parts.append(f"<section{ident}><h2>{escape(heading)}</h2>{''.join(fragments)}</section>")

    def provenance(self, command: str | None, config: Mapping[str, Any] | None,
                   software: Mapping[str, Any] | None) -> None:
        """The "how this was made" section: the exact command, the config (JSON) and the versions."""
        frags = [HtmlReport.paragraph("Command:"), HtmlReport.preformatted(command or "(not recorded)", "command")]
        if software:
            frags.append(HtmlReport.key_values(dict(software), "versions"))
        if config:
            frags += [HtmlReport.paragraph("Config:"),
                      HtmlReport.preformatted(json.dumps(config, indent=2, default=str), "config")]
        self.section("Provenance", *frags, section_id="provenance")

    def render(self) -> str:
        """The complete HTML document."""
        sub = f'<p class="note">{escape(self.subtitle)}</p>' if self.subtitle else ""
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{escape(self.title)}</title><style>{_STYLE}</style></head>"
                f"<body><h1>{escape(self.title)}</h1>{sub}{''.join(self.parts)}</body></html>\n")

    def write(self, path: str | Path) -> Path:
        """Write the page to ``path`` atomically and return the path."""
        path = Path(path)
        atomic_write_text(path, self.render())
        return path
