"""Writing a report: one self-contained HTML file (plots embedded as data URIs, no scripts, no
network), the same content as markdown with the plots as PNG files beside it, and the tidy CSV.

A shared store is untrusted, and every one of these carries its text (run names, params, tags,
commands): HTML escapes it; markdown gets it with HTML's characters as entities and the
characters that would make a link, an image, code or emphasis backslash-escaped, and commands in code spans no
backtick can close (a renderer shows it, never runs or fetches it); the CSV prefixes a cell that
a spreadsheet would take for a formula with an apostrophe (OWASP's advice on CSV injection)."""

from __future__ import annotations

import base64
import hashlib
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

MAX_SLUG = 80  # characters of a figure's file name (file systems stop at 255 bytes)


class Code(str):
    """A line shown as code (a command): a code span in markdown, <pre> in HTML."""


@dataclass
class Report:
    title: str
    intro: list[str]
    tables: list[tuple[str, pd.DataFrame, str]] = field(default_factory=list)  # (heading, table, note)
    figures: dict[str, bytes] = field(default_factory=dict)
    best: list[str] = field(default_factory=list)   # lines; Code ones are commands


# Backslash, code, emphasis, table cells, and a ] that would close a link, an image or a link
# definition (`](`, `][`, `]:`): without it no link forms, so intervals such as [0.1, 0.3] stay as
# they read. (An intraword _ makes no emphasis in CommonMark.)
MD_ESCAPED = re.compile(r"[\\`*|]|\](?=[(\[:])")
ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def md_text(value) -> str:
    """`value` as inert markdown text on one line (see the module docstring)."""
    text = " ".join(str(value).split())
    text = "".join(ENTITIES.get(c, c) for c in text)
    return MD_ESCAPED.sub(lambda m: "\\" + m.group(0), text)


def md_code(value) -> str:
    """`value` as a markdown code span on one line, fenced by more backticks than it holds in a row."""
    text = " ".join(str(value).split())
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def csv_safe(value):
    """A text cell a spreadsheet would evaluate (=, +, -, @, tab, CR first) with an apostrophe
    before it; numbers and other text unchanged."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    cell = md_text
    lines = ["| " + " | ".join(cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def slug(title: str) -> str:
    """A file name for a figure: the title's letters and digits, at most MAX_SLUG of them (a title
    may carry a study's name from the store), and a short hash of the whole title when cut."""
    text = "".join(c if c.isascii() and c.isalnum() else "_" for c in title).strip("_").lower()
    if len(text) <= MAX_SLUG:
        return text
    return f"{text[:MAX_SLUG - 9]}_{hashlib.sha256(title.encode()).hexdigest()[:8]}"


def to_markdown(rep: Report) -> str:
    parts = [f"# {md_text(rep.title)}", *map(md_text, rep.intro)]
    for heading, table, note in rep.tables:
        parts += [f"## {md_text(heading)}", md_text(note) if note else "", md_table(table)]
    if rep.best:
        parts += ["## Best run", *(md_code(line) if isinstance(line, Code) else md_text(line) for line in rep.best)]
    parts += ["## Figures", *(f"![{md_text(t)}]({slug(t)}.png)" for t in rep.figures)]
    return "\n\n".join(p for p in parts if p) + "\n"


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;
border:1px solid #eee;margin:.5em 0}code,pre{background:#f6f6f6;padding:.1em .3em}pre{padding:.6em;overflow-x:auto}
figure{margin:0 0 1.5em}figcaption{font-size:.9em;color:#555}"""


def to_html(rep: Report) -> str:
    esc = html.escape
    body = [f"<h1>{esc(rep.title)}</h1>", *(f"<p>{esc(p)}</p>" for p in rep.intro)]
    for heading, table, note in rep.tables:
        body.append(f"<h2>{esc(heading)}</h2>")
        if note:
            body.append(f"<p>{esc(note)}</p>")
        body.append(table.to_html(index=False, escape=True, border=0))
    if rep.best:
        body.append("<h2>Best run</h2>")
        body += [f"<pre>{esc(line)}</pre>" if isinstance(line, Code) else f"<p>{esc(line)}</p>"
                 for line in rep.best]
    if rep.figures:
        body.append("<h2>Figures</h2>")
        for title, png in rep.figures.items():
            data = base64.b64encode(png).decode()
            body.append(f'<figure><img alt="{esc(title)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{esc(title)}</figcaption></figure>")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(rep.title)}</title>'
            f'<link rel="icon" href="data:,"><style>{CSS}</style></head><body>\n' + "\n".join(body)
            + "\n</body></html>\n")


def write(rep: Report, csv: pd.DataFrame, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    for title, png in rep.figures.items():
        (out / f"{slug(title)}.png").write_bytes(png)
    (out / "index.html").write_text(to_html(rep))
    (out / "report.md").write_text(to_markdown(rep))
    csv.map(csv_safe).to_csv(out / "runs.csv", index=False)
    return [out / "index.html", out / "report.md", out / "runs.csv"]
