"""What every report shares: JSON files, PNG figures, plain text tables."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(data: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return path


def save_figure(fig, path, dpi: int) -> Path:
    """Write a matplotlib figure as PNG (creating its folder) and release it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain aligned text table (the demo's side-by-side comparison)."""
    cells = [[str(c) for c in columns]] + [[fmt_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    out = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in cells]
    out.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(out)


def fmt_cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
