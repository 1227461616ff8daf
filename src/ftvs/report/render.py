"""Render report blocks to Markdown, self-contained HTML and PDF (WeasyPrint).

A report is a list of blocks (dicts with a `t` type): h1/h2/h3, p, ul, table, fig, note. Text uses two
inline marks only: **bold** and `code`. Markdown and HTML are rendered from the same blocks, so the two
formats can never disagree; the PDF is the HTML laid out by WeasyPrint with print CSS, shrunk step by
step until it fits the page budget.
"""

from __future__ import annotations

import base64
import html
import logging
import re
from importlib import resources
from pathlib import Path
from string import Template

from ftvs.errors import FtvsError
from ftvs.fileio import atomic_write_bytes

_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _spans(text) -> list[tuple[bool, str]]:
    """(is a `code` span, its text) of each run of `text`, the backticks kept."""
    parts = re.split(r"(`[^`]+`)", str(text))
    return [(p.startswith("`") and p.endswith("`") and len(p) > 1, p) for p in parts]


def inline_html(text: str) -> str:
    return "".join(
        f"<code>{html.escape(part[1:-1])}</code>"
        if code
        else _BOLD.sub(r"<strong>\1</strong>", html.escape(part))
        for code, part in _spans(text)
    )


# what a Markdown viewer would read as HTML: `<` opening a tag, comment or autolink (not "p < 0.05"), and
# `&` opening an entity
_MD_HTML = re.compile(r"<(?=[A-Za-z/!?])|&(?=#?\w+;)")


def inline_md(text) -> str:
    """Text for Markdown: outside `code` spans (which Markdown shows as written), a tag-opening `<` and an
    entity-opening `&` are escaped, so a label name or text such as `<script>` shows as text and never
    runs as HTML (report.html escapes the same texts)."""
    return "".join(
        part if code else _MD_HTML.sub(lambda m: "&lt;" if m.group() == "<" else "&amp;", part)
        for code, part in _spans(text)
    )


def _md_cell(text) -> str:
    return inline_md(text).replace("|", "\\|").replace("\n", " ")


def _cell_html(text) -> str:
    return "<br>".join(inline_html(part) for part in str(text).split("\n"))


def to_markdown(blocks: list[dict]) -> str:
    lines: list[str] = []
    for b in blocks:
        t = b["t"]
        if t in ("h1", "h2", "h3"):
            lines += ["#" * int(t[1]) + " " + inline_md(b["text"]), ""]
        elif t == "p":
            lines += [inline_md(b["text"]), ""]
        elif t == "note":
            lines += ["> " + inline_md(b["text"]), ""]
        elif t == "box":
            quoted = [q for line in b["lines"] for q in (">", "> " + inline_md(line))]
            lines += [f"> **{b['title']}**", *quoted, ""]
        elif t == "ul":
            lines += [f"- {inline_md(item)}" for item in b["items"]] + [""]
        elif t == "table":
            if b.get("caption"):
                lines += [f"*{inline_md(b['caption'])}*", ""]
            lines.append("| " + " | ".join(_md_cell(h) for h in b["header"]) + " |")
            lines.append("|" + "|".join("---:" if a == "r" else "---" for a in _aligns(b)) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b["rows"]]
            lines.append("")
        elif t == "fig":
            caption = inline_md(b["caption"])
            lines += [f"![{caption}]({b['file']})", "", f"*Figure: {caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"


def _aligns(b: dict) -> list[str]:
    if b.get("align"):
        return list(b["align"])
    out = []
    for j in range(len(b["header"])):
        col = [str(r[j]) for r in b["rows"] if j < len(r)]
        numeric = col and all(re.fullmatch(r"[-+–±.,0-9 %×eEkMBGbs()/\[\]<\n]+", c or "–") for c in col)
        out.append("r" if numeric else "l")
    return out


FIG_DPI = 130  # plots_compare.DPI
TEXT_WIDTH_IN = 7.2  # A4 text block at the default margins


def _natural_width(path: Path) -> float:
    """The PNG's width at its own DPI as a percentage of the text block (so small figures stay small)."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
        px = int.from_bytes(head[16:20], "big") if head[:8] == b"\x89PNG\r\n\x1a\n" else 0
    except OSError:
        px = 0
    return 100.0 if px <= 0 else 100.0 * px / FIG_DPI / TEXT_WIDTH_IN


def _img_data(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def to_html_body(blocks: list[dict], fig_dir: Path, scale: float = 1.0) -> str:
    out: list[str] = []
    fig_no = 0
    table_no = 0
    for b in blocks:
        t = b["t"]
        if t == "h1":
            out.append(f"<h1>{inline_html(b['text'])}</h1>")
        elif t in ("h2", "h3"):
            out.append(f'<{t} id="{slug(b["text"])}">{inline_html(b["text"])}</{t}>')
        elif t == "p":
            out.append(f"<p>{inline_html(b['text'])}</p>")
        elif t == "note":
            out.append(f'<p class="note">{inline_html(b["text"])}</p>')
        elif t == "box":
            lines = "".join(f"<p>{inline_html(line)}</p>" for line in b["lines"])
            out.append(f'<div class="box"><p class="box-title">{inline_html(b["title"])}</p>{lines}</div>')
        elif t == "ul":
            out.append("<ul>" + "".join(f"<li>{inline_html(i)}</li>" for i in b["items"]) + "</ul>")
        elif t == "table":
            table_no += 1
            aligns = _aligns(b)
            cls = " ".join(["data"] + ([b["cls"]] if b.get("cls") else []))
            rows = [f'<table class="{cls}">']
            if b.get("caption"):
                rows.append(f"<caption>Table {table_no}. {inline_html(b['caption'])}</caption>")
            rows.append(
                "<thead><tr>"
                + "".join(f'<th class="{a}">{inline_html(h)}</th>' for h, a in zip(b["header"], aligns))
                + "</tr></thead><tbody>"
            )
            for r in b["rows"]:
                rows.append(
                    "<tr>"
                    + "".join(f'<td class="{a}">{_cell_html(c)}</td>' for c, a in zip(r, aligns))
                    + "</tr>"
                )
            rows.append("</tbody></table>")
            out.append("".join(rows))
        elif t == "fig":
            fig_no += 1
            path = Path(fig_dir) / b["file"]
            width = max(25, min(100, round(min(b.get("width", 100), _natural_width(path)) * scale)))
            src = _img_data(path) if path.is_file() else ""
            out.append(
                f'<figure id="fig-{slug(b["file"])}"><img src="{src}" alt="{html.escape(b["caption"])}" '
                f'style="width:{width}%"><figcaption>Figure {fig_no}. {inline_html(b["caption"])}'
                f"</figcaption></figure>"
            )
    return "\n".join(out)


def _asset(name: str) -> str:
    return resources.files("ftvs.report").joinpath(name).read_text(encoding="utf-8")


def to_html(blocks: list[dict], fig_dir: Path, title: str, extra_css: str = "", scale: float = 1.0) -> str:
    return Template(_asset("report.html")).substitute(
        title=html.escape(title),
        css=_asset("report.css") + "\n" + extra_css,
        body=to_html_body(blocks, fig_dir, scale=scale),
    )


# print layouts: (base font pt, figure scale, table font pt, margin mm); DEFAULT_LEVEL first, then
# smaller ones while the report is too long, or larger ones while it is too short
PDF_LEVELS = [
    (12.0, 1.2, 9.5, 18),
    (11.2, 1.1, 9.0, 17),
    (10.5, 1.0, 8.5, 16),
    (10.0, 0.92, 8.0, 15),
    (9.5, 0.84, 7.5, 14),
    (9.0, 0.76, 7.2, 13),
    (8.6, 0.68, 6.8, 12),
    (8.2, 0.6, 6.5, 11),
]
DEFAULT_LEVEL = 2


def _print_css(level) -> str:
    font, _, table_font, margin = level
    return (
        f"@page {{ size: A4; margin: {margin}mm {margin}mm {margin + 2}mm {margin}mm; "
        f"@bottom-center {{ content: counter(page) ' / ' counter(pages); font-size: 8pt; color: #666; }} }}\n"
        f"body {{ font-size: {font}pt; max-width: none; margin: 0; padding: 0; }}\n"
        f"table.data {{ font-size: {table_font}pt; }}\n"
        "table.data td.r, table.data th.r { white-space: normal; }\n"
        "table.data th { overflow-wrap: anywhere; }\n"
        "table.data td { overflow-wrap: anywhere; }\n"
    )


def write_pdf(
    blocks: list[dict], fig_dir: Path, title: str, path: Path, min_pages: int = 4, max_pages: int = 6
) -> dict:
    """Lay out with WeasyPrint at the default size; shrink while longer than max_pages, grow while shorter
    than min_pages (never past max_pages). Returns {"pages", "level", ...}."""
    try:
        from weasyprint import HTML
    except (ImportError, OSError) as e:  # OSError: pango/harfbuzz system libraries missing
        raise FtvsError(
            f"report.pdf needs WeasyPrint and the Pango libraries ({e.__class__.__name__}: {e}); "
            "`pip install weasyprint` and `apt-get install libpango-1.0-0 libpangoft2-1.0-0 "
            "fonts-dejavu-core`, "
            "or pass --formats md,html"
        ) from None
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    rendered: dict[int, object] = {}

    def render(k: int):
        if k not in rendered:
            level = PDF_LEVELS[k]
            rendered[k] = HTML(
                string=to_html(blocks, fig_dir, title, _print_css(level), scale=level[1]),
                base_url=str(fig_dir),
            ).render()
        return rendered[k]

    k = DEFAULT_LEVEL
    if len(render(k).pages) > max_pages:  # too long: shrink until it fits (or the smallest level)
        while k + 1 < len(PDF_LEVELS) and len(render(k).pages) > max_pages:
            k += 1
    else:  # short: grow while it stays within the budget
        while k > 0 and len(render(k).pages) < min_pages and len(render(k - 1).pages) <= max_pages:
            k -= 1
    doc = render(k)
    atomic_write_bytes(path, doc.write_pdf())
    return {"pages": len(doc.pages), "level": k, "min_pages": min_pages, "max_pages": max_pages}
