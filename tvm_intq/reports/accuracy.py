"""The accuracy table of ``make eval``: every method against ONNX Runtime int8, per model."""

from __future__ import annotations

from pathlib import Path

from tvm_intq.reports.files import save_figure, write_json

ACCURACY_COLUMNS = [
    "float",
    "percentile",
    "minmax",
    "kl",
    "mse",
    "redistribution",
    "symmetric-kl",
    "pow2",
    "auto",
    "hybrid-precision",
    "ort-minmax",
    "ort-entropy",
]
_TVM_COLUMNS = ACCURACY_COLUMNS[1:10]


def _accuracy_cell(row: dict, col: str, key: str | None = None) -> str:
    cell = row["columns"].get(col)
    if cell is None:
        return "-"
    text = f"{cell[key or row['metric']]:.2f}"
    if col == "hybrid-precision" and "num_float_layers" in cell:
        text += f" ({cell['num_float_layers']} float)"
    return text


def accuracy_checks(row: dict) -> list[str]:
    """The issue's Done-when comparisons for one row, each as a sentence."""
    c, m = row["columns"], row["metric"]
    out = []
    if "redistribution" in c and "symmetric-kl" in c:
        d = c["redistribution"][m] - c["symmetric-kl"][m]
        out.append(
            f"hybrid-asym + redistribution vs symmetric-KL: {d:+.2f} "
            f"({'holds' if d >= 0 else 'does NOT hold'})"
        )
    ours = [k for k in _TVM_COLUMNS if k in c and k != "hybrid-precision"]
    theirs = [k for k in ("ort-minmax", "ort-entropy") if k in c]
    if ours and theirs:
        best_o = max(ours, key=lambda k: c[k][m])
        best_t = max(theirs, key=lambda k: c[k][m])
        d = c[best_o][m] - c[best_t][m]
        out.append(
            f"best all-int8 tvm-intq ({best_o}) vs best ONNX Runtime ({best_t}): {d:+.2f} "
            f"({'holds' if d >= 0 else 'does NOT hold'})"
        )
    if "hybrid-precision" in c and "float" in c:
        d = c["float"][m] - c["hybrid-precision"][m]
        n = c["hybrid-precision"].get("num_float_layers")
        out.append(
            f"hybrid precision: {d:.2f} points below float with {n} float layer(s) "
            f"({'within 0.5' if d <= 0.5 else 'NOT within 0.5'})"
        )
    return out


def accuracy_markdown(data: dict) -> str:
    rows = data["rows"]
    head = "| model (metric, %) | " + " | ".join(ACCURACY_COLUMNS) + " |"
    lines = [
        "# Accuracy: float vs int8, tvm-intq and ONNX Runtime",
        "",
        "Task metric on the evaluation set (higher is better). tvm-intq columns: "
        "hybrid-asym with the named calibrator, `symmetric-kl` (S0/S2 baseline), `pow2` "
        "(percentile), `auto` (per-layer scheme), `hybrid-precision` (percentile, "
        "`--float-layers auto`, float layer count in brackets). ONNX Runtime: "
        "`quantize_static` QDQ per-channel int8, same calibration inputs.",
        "",
        head,
        "|" + "---|" * (len(ACCURACY_COLUMNS) + 1),
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} ({r['metric']}) | "
            + " | ".join(_accuracy_cell(r, c) for c in ACCURACY_COLUMNS)
            + " |"
        )
    lines += [
        "",
        "Output SQNR against float (dB):",
        "",
        head.replace("(metric, %)", ""),
        "|" + "---|" * (len(ACCURACY_COLUMNS) + 1),
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | "
            + " | ".join(
                "-" if c == "float" else _accuracy_cell(r, c, "sqnr_db") for c in ACCURACY_COLUMNS
            )
            + " |"
        )
    lines += ["", "## Per model", ""]
    for r in rows:
        lines += [
            f"### {r['model']} (`{r['file']}`, {r['quantization_points']} quantization points)"
            if "quantization_points" in r
            else f"### {r['model']}",
            "",
            f"- calibration: {r['data']['calib']}; evaluation: {r['data']['eval']}",
        ]
        extra = [k for k in r["columns"]["float"] if k not in ("sqnr_db", "seconds")]
        lines.append(
            "- all metrics: "
            + "; ".join(
                f"{col}: " + ", ".join(f"{k} {cell[k]:.2f}" for k in extra)
                for col, cell in r["columns"].items()
            )
        )
        hp = r["columns"].get("hybrid-precision", {})
        if hp:
            lines.append(
                f"- hybrid precision target: {hp.get('target')}; float layers: "
                f"{', '.join(hp.get('float_layers', [])) or 'none'}"
            )
        auto = r["columns"].get("auto", {})
        if auto.get("schemes"):
            line = "- auto: " + ", ".join(f"{k} x{v}" for k, v in auto["schemes"].items())
            checked = auto.get("checked_sqnr_db")
            if checked:  # the search's choice and each uniform scheme, as integer programs
                tried = {"descent's choice": checked["auto"], **checked["uniform"]}
                line += (
                    f" (kept: {auto['kept']}; worst-part SQNR as integers on calibration samples"
                    " the search did not use: "
                    + ", ".join(f"{k} {v:.1f} dB" for k, v in tried.items())
                    + ")"
                )
            lines.append(line)
        lines += [f"- {s}" for s in accuracy_checks(r)] + [""]
    if data.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in data["notes"]] + [""]
    lines += [
        f"Command: `{data['command']}` ({data.get('machine', '')})"
        + (f"; this file last written by `{data['last_run']}`" if data.get("last_run") else ""),
        "",
    ]
    return "\n".join(lines)


def plot_accuracy(data: dict, path) -> Path:
    """One panel per model: the task metric of every column, float as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 2.6 * len(rows)), squeeze=False)
    for ax, r in zip(axes[:, 0], rows):
        cols = [c for c in ACCURACY_COLUMNS[1:] if c in r["columns"]]
        vals = [r["columns"][c][r["metric"]] for c in cols]
        colors = ["tab:orange" if c.startswith("ort") else "tab:blue" for c in cols]
        ax.bar(range(len(cols)), vals, color=colors)
        ax.axhline(r["columns"]["float"][r["metric"]], color="k", ls="--", lw=1, label="float")
        lo = min(vals + [r["columns"]["float"][r["metric"]]])
        ax.set_ylim(max(0.0, lo - 5.0), 100.5)
        ax.set_xticks(range(len(cols)), cols, fontsize=8)
        ax.set_ylabel(f"{r['model']}: {r['metric']} %", fontsize=9)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle("tvm-intq (blue) vs ONNX Runtime int8 (orange); dashed: float")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def write_accuracy(data: dict, folder) -> list[Path]:
    """``results.json``, ``results.md`` and ``results.png`` of the accuracy table."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / "results.md"
    md.write_text(accuracy_markdown(data))
    return [
        write_json(data, folder / "results.json"),
        md,
        plot_accuracy(data, folder / "results.png"),
    ]
