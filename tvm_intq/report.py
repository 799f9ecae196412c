"""Write what the other modules computed: JSON reports, PNG plots, console tables.

The only module that formats results; it takes plain data (dicts, lists, numbers).
"""

from __future__ import annotations

import json
from pathlib import Path


def write_json(data: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return path


def plot_layer_sqnr(report: dict, path) -> Path:
    """Bar chart of per-layer SQNR (int8 output of each layer vs float), worst layers red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [layer for layer in report["layers"] if layer["sqnr_db"] is not None]
    names = [f"{layer['name']}\n{layer['op'][:28]}" for layer in layers]
    values = [layer["sqnr_db"] for layer in layers]
    worst = sorted(values)[: max(1, len(values) // 10)] if values else []
    colors = ["tab:red" if v in worst else "tab:blue" for v in values]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(values) + 2), 4.5))
    ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("SQNR (dB), higher is better")
    ax.axhline(report.get("output_sqnr_db", 0), color="gray", linestyle="--", linewidth=1,
               label=f"model output {report.get('output_sqnr_db', 0):.1f} dB")
    ax.set_title(f"Per-layer SQNR, int8 vs float: {Path(report['model']).name} "
                 f"({report['scheme']}, {report['calibrator']})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(report: dict, path) -> tuple[Path, Path]:
    """``report.json`` and, beside it, ``report.png`` (per-layer SQNR)."""
    json_path = write_json(report, path)
    return json_path, plot_layer_sqnr(report, Path(path).with_suffix(".png"))


def summary(report: dict) -> str:
    """A few lines for the console after ``compile``."""
    lines = [
        f"model {report['model']}  target {report['target']}  scheme {report['scheme']}  "
        f"calibrator {report['calibrator']}",
        f"integer only: {'yes' if report['integer_only'] else 'no'}"
        + ("" if report["integer_only"] else f" ({len(report['float_ops'])} float ops left: "
           + ", ".join(report["float_ops"][:5]) + (" ..." if len(report["float_ops"]) > 5 else "") + ")"),
        f"output SQNR int8 vs float: {report['output_sqnr_db']:.1f} dB on "
        f"{report['num_eval_samples']} held-out samples",
        f"weights: fp32 {report['weights_bytes']['fp32']:,} B, int8 {report['weights_bytes']['int8']:,} B",
    ]
    if "top1" in report:
        lines.append(f"top-1: fp32 {100 * report['top1']['fp32']:.2f} %, int8 {100 * report['top1']['int8']:.2f} %")
    return "\n".join(lines)


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain aligned text table (the demo's side-by-side comparison)."""
    cells = [[str(c) for c in columns]] + [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    out = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in cells]
    out.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(out)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
