"""What every report shares: JSON files, PNG figures, plain text tables."""

from __future__ import annotations

import json
from pathlib import Path

from tvm_intq.files import atomic_path, make_folder, write_text


def write_json(data: dict, path) -> Path:
    """Write ``data`` as JSON, whole (a temporary file renamed over ``path``), creating its
    folder."""
    path = Path(path)
    make_folder(path.parent)
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def save_figure(fig, path, dpi: int) -> Path:
    """Write a matplotlib figure as PNG (creating its folder) and release it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    make_folder(path.parent)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
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
