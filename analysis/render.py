"""Writing a report: one self-contained HTML file (plots embedded as data URIs, no scripts, no
network), the same content as markdown with the plots as PNG files beside it, and the tidy CSV."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class Report:
    title: str
    intro: list[str]
    tables: list[tuple[str, pd.DataFrame, str]] = field(default_factory=list)  # (heading, table, note)
    figures: dict[str, bytes] = field(default_factory=dict)
    best: list[str] = field(default_factory=list)


def md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    cell = lambda v: " ".join(str(v).split()).replace("|", "\\|")  # noqa: E731  (one line per row)
    lines = ["| " + " | ".join(cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def slug(title: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in title).strip("_").lower()


def to_markdown(rep: Report) -> str:
    parts = [f"# {rep.title}", *rep.intro]
    for heading, table, note in rep.tables:
        parts += [f"## {heading}", note, md_table(table)] if note else [f"## {heading}", md_table(table)]
    if rep.best:
        parts += ["## Best run", *rep.best]
    parts += ["## Figures", *(f"![{t}]({slug(t)}.png)" for t in rep.figures)]
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
        body += [f"<pre>{esc(line.strip('`'))}</pre>" if line.startswith("`") else f"<p>{esc(line)}</p>"
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
    csv.to_csv(out / "runs.csv", index=False)
    return [out / "index.html", out / "report.md", out / "runs.csv"]
