"""Server-rendered SVG: the plan graph of a project and horizontal bar charts.

No script draws anything: the browser gets finished SVG, every label escaped, colours as
presentation attributes (the console's CSP allows no inline styles).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hiclaw.console.render import esc
from hiclaw.manager.plan import MERMAID_STYLES
from hiclaw.state import Task

BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 210, 62, 28, 46, 12


def _colours(state: str) -> tuple[str, str, bool]:
    """(fill, stroke, dashed) of a task state, from the plan's Mermaid styles (one palette)."""
    parts = dict(p.split(":", 1) for p in MERMAID_STYLES.get(state, "fill:#fff,stroke:#999").split(","))
    return parts.get("fill", "#fff"), parts.get("stroke", "#999"), "stroke-dasharray" in parts


def _clip(text: str, limit: int) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def depths(tasks: Sequence[Task]) -> dict[str, int]:
    """Each task's layer: 0 without dependencies, else one below its deepest dependency (a
    revision one below the task it revises). Cycles cannot come from a validated plan; a
    broken reference counts as none."""
    by_id = {t.id: t for t in tasks}
    found: dict[str, int] = {}

    def depth(task_id: str, seen: frozenset[str]) -> int:
        if task_id in found:
            return found[task_id]
        task = by_id[task_id]
        before = [d for d in [*task.depends_on, task.revision_of] if d in by_id and d not in seen]
        value = 1 + max((depth(d, seen | {d}) for d in before), default=-1)
        found[task_id] = value
        return value

    for task in tasks:
        depth(task.id, frozenset({task.id}))
    return found


def plan_svg(tasks: Sequence[Task]) -> str:
    """The plan as layers of boxes (id, title, assignee · model, state) joined by dependency
    edges (solid) and revision edges (dashed); each box links to its task page."""
    if not tasks:
        return '<p class="muted">no tasks yet</p>'
    layer_of = depths(tasks)
    layers: dict[int, list[Task]] = {}
    for task in sorted(tasks, key=lambda t: (layer_of[t.id], t.position, t.id)):
        layers.setdefault(layer_of[task.id], []).append(task)
    widest = max(len(row) for row in layers.values())
    width = PAD * 2 + widest * BOX_W + (widest - 1) * GAP_X
    height = PAD * 2 + len(layers) * BOX_H + (len(layers) - 1) * GAP_Y
    where: dict[str, tuple[float, float]] = {}
    for number, row in layers.items():
        offset = (width - (len(row) * BOX_W + (len(row) - 1) * GAP_X)) / 2
        for index, task in enumerate(row):
            where[task.id] = (offset + index * (BOX_W + GAP_X), PAD + number * (BOX_H + GAP_Y))
    edges = []
    for task in tasks:
        x2, y2 = where[task.id]
        sources = [(d, False) for d in task.depends_on if d in where]
        if task.revision_of in where:
            sources.append((task.revision_of, True))
        for source, dashed in sources:
            x1, y1 = where[source]
            edges.append(f'<line x1="{x1 + BOX_W / 2:.0f}" y1="{y1 + BOX_H:.0f}" x2="{x2 + BOX_W / 2:.0f}" '
                         f'y2="{y2 - 3:.0f}" stroke="#607d8b" stroke-width="1.5" marker-end="url(#arrow)"'
                         + (' stroke-dasharray="5 4"' if dashed else "") + "/>")
    boxes = []
    for task in tasks:
        x, y = where[task.id]
        fill, stroke, dashed = _colours(task.state.value)
        who = task.assignee + (f" · {task.model}" if task.model else "")
        boxes.append(
            f'<a href="/tasks/{esc(task.id)}" class="node" data-task="{esc(task.id)}" data-state="{esc(task.state.value)}">'
            f"<title>{esc(task.id)}: {esc(task.title)}</title>"
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="{esc(fill)}" '
            f'stroke="{esc(stroke)}" stroke-width="2"' + (' stroke-dasharray="4"' if dashed else "") + "/>"
            f'<text x="{x + 8:.0f}" y="{y + 17:.0f}" class="t-id">{esc(task.id)} · {esc(task.state.value)}</text>'
            f'<text x="{x + 8:.0f}" y="{y + 35:.0f}" class="t-title">{esc(_clip(task.title, 30))}</text>'
            f'<text x="{x + 8:.0f}" y="{y + 52:.0f}" class="t-who">{esc(_clip(who, 34))}</text></a>')
    return (f'<svg class="plan" role="img" aria-label="plan graph" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" xmlns="http://www.w3.org/2000/svg">'
            '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#607d8b"/></marker></defs>'
            + "".join(edges) + "".join(boxes) + "</svg>")


@dataclass
class Bar:
    label: str
    value: float
    budget: float | None = None  # draws this row's 80 % and 100 % lines


LABEL_W, BAR_W, ROW_H, VALUE_W = 150, 420, 26, 90


def bar_chart(bars: Sequence[Bar], *, unit: str = "$", name: str = "chart") -> str:
    """Horizontal bars scaled to the largest value or budget; a row with a budget gets an amber
    line at 80 % and a red one at 100 % of it (both labelled in the row's tooltip)."""
    if not bars:
        return '<p class="muted">no usage yet</p>'
    top = max([b.value for b in bars] + [b.budget or 0 for b in bars]) or 1.0
    height = len(bars) * ROW_H + 8
    width = LABEL_W + BAR_W + VALUE_W
    rows = []
    for index, bar in enumerate(bars):
        y = 4 + index * ROW_H
        length = max(1.0, bar.value / top * BAR_W) if bar.value > 0 else 0
        tip = f"{bar.label}: {unit}{bar.value:.4f}" + (f" of a {unit}{bar.budget:.2f} budget" if bar.budget else "")
        row = [f'<g class="bar" data-label="{esc(bar.label)}" data-value="{bar.value:.6f}"><title>{esc(tip)}</title>',
               f'<text x="{LABEL_W - 8}" y="{y + 17}" text-anchor="end">{esc(_clip(bar.label, 22))}</text>',
               f'<rect x="{LABEL_W}" y="{y + 4}" width="{length:.1f}" height="{ROW_H - 8}" rx="3" fill="#1e88e5"/>',
               f'<text x="{LABEL_W + BAR_W + 8}" y="{y + 17}">{esc(unit)}{bar.value:.4f}</text>']
        if bar.budget:
            for share, colour, kind in ((0.8, "#f9a825", "budget80"), (1.0, "#e53935", "budget100")):
                x = LABEL_W + bar.budget * share / top * BAR_W
                row.append(f'<line class="{kind}" x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + ROW_H}" '
                           f'stroke="{colour}" stroke-width="2"/>')
        rows.append("".join(row) + "</g>")
    return (f'<svg class="chart" role="img" aria-label="{esc(name)}" data-chart="{esc(name)}" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
            + "".join(rows) + "</svg>")
