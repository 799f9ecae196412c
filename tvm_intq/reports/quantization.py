"""The compile/eval report: per-layer error (S2 Eqs. 23-25) as a summary, a table and plots."""

from __future__ import annotations

from pathlib import Path

from tvm_intq.reports.files import save_figure, table, write_json


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
    if report.get("output_sqnr_db") is not None:
        ax.axhline(
            report["output_sqnr_db"],
            color="gray",
            linestyle="--",
            linewidth=1,
            label=f"model output {report['output_sqnr_db']:.1f} dB",
        )
        ax.legend(loc="lower right")
    ax.set_title(
        f"Per-layer SQNR, int8 vs float: {Path(report['model']).name} "
        f"({', '.join(str(v) for v in (report['scheme'], report.get('calibrator')) if v)})"
    )
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def write_report(report: dict, path) -> tuple[Path, Path]:
    """``report.json`` and, beside it, ``report.png`` (per-layer SQNR)."""
    json_path = write_json(report, path)
    return json_path, plot_layer_sqnr(report, Path(path).with_suffix(".png"))


def summary(report: dict) -> str:
    """A few lines for the console after ``compile``."""
    lines = [
        f"model {report['model']}  target {report['target']}  scheme {report['scheme']}"
        + (f"  calibrator {report['calibrator']}" if report.get("calibrator") else ""),
        f"integer only: {'yes' if report['integer_only'] else 'no'}"
        + (
            ""
            if report["integer_only"]
            else f" ({len(report['float_ops'])} float ops left: "
            + ", ".join(report["float_ops"][:5])
            + (" ..." if len(report["float_ops"]) > 5 else "")
            + ")"
        ),
        (
            f"output SQNR int8 vs float: {report['output_sqnr_db']:.1f} dB on "
            f"{report['num_eval_samples']} held-out samples"
            if report["output_sqnr_db"] is not None
            else "output SQNR: not measured (give --eval data)"
        ),
        *_part_lines(report),
        "weights: "
        + ", ".join(f"{k} {v:,} B" for k, v in report["weights_bytes"].items() if v is not None),
    ]
    lines += [f"warning: {w}" for w in report.get("calibration_warnings", [])]
    if "top1" in report:
        lines.append(
            f"top-1: fp32 {100 * report['top1']['fp32']:.2f} %, "
            f"int8 {100 * report['top1']['int8']:.2f} %"
        )
    if report.get("float_layers"):
        lines.append(
            f"float layers ({len(report['float_layers'])}): "
            + "; ".join(f"{f['name']} ({f['reason']})" for f in report["float_layers"])
        )
    acc = report.get("accumulators")
    if acc:
        # The int32 claim is about the accumulator alone; the bias joins it inside the int64
        # requantize (a channel of near-zero weights has a bias of many accumulator units).
        widest = max(acc, key=lambda a: a["acc_bits"])
        biased = max(acc, key=lambda a: a["with_bias_bits"])
        over = [a["name"] for a in acc if a["overflows_int32"]]
        lines.append(
            f"accumulators: widest {widest['acc_bits']} bits ({widest['name']}); "
            + (f"can overflow int32: {', '.join(over)}" if over else "none can overflow int32")
            + f"; with the bias (int64): {biased['with_bias_bits']} bits ({biased['name']})"
        )
    return "\n".join(lines)


def _part_lines(report: dict) -> list[str]:
    """Each output's SQNR and its parts' (a detection head's boxes and scores), when the model
    has more than one output or concatenates parts into one; the worst named."""
    outputs = report.get("outputs") or []
    if len(outputs) <= 1 and not any(o["parts"] for o in outputs):
        return []
    lines = []
    for o in outputs:
        parts = ", ".join(f"{p['name']} {p['sqnr_db']:.1f}" for p in o["parts"])
        lines.append(
            f"  {o['name']}: {o['sqnr_db']:.1f} dB" + (f" (parts: {parts})" if parts else "")
        )
    w = report["worst_part"]
    where = w["output"] + (f" / {w['part']}" if w["part"] else "")
    return lines + [f"worst output part: {where} {w['sqnr_db']:.1f} dB"]


def layer_table(report: dict) -> str:
    """Per-layer error against float (S2 Eqs. 23-25) as a text table."""
    rows = [
        {
            "layer": lay["name"],
            "op": lay["op"],
            "precision": lay["precision"],
            "SQNR dB": lay["sqnr_db"],
            "Manhattan": lay.get("manhattan"),
            "Euclidean": lay.get("euclidean"),
        }
        for lay in report["layers"]
    ]
    return table(rows, ["layer", "op", "precision", "SQNR dB", "Manhattan", "Euclidean"])


def plot_per_layer(report: dict, path) -> Path:
    """Per-layer SQNR bars (float-kept layers grey) over the histograms of the worst layers'
    float values, with the calibrated clipping range and the int8-representable range drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [lay for lay in report["layers"] if lay["sqnr_db"] is not None]
    hists = report.get("layer_histograms", [])
    ncols = max(1, len(hists))
    fig = plt.figure(figsize=(max(8.0, 0.35 * len(layers) + 2, 3.2 * ncols), 8.5))
    grid = fig.add_gridspec(2, ncols, height_ratios=[1.1, 1.0])
    ax = fig.add_subplot(grid[0, :])
    values = [lay["sqnr_db"] for lay in layers]
    worst = {h["name"] for h in hists}
    colors = [
        "tab:gray"
        if lay["precision"] == "float"
        else "tab:red"
        if lay["name"] in worst
        else "tab:blue"
        for lay in layers
    ]
    ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels(
        [f"{lay['name']}\n{lay['op'][:24]}" for lay in layers], rotation=90, fontsize=6
    )
    ax.set_ylabel("SQNR (dB) vs float")
    out_sqnr = report.get("output_sqnr_db", 0.0)
    ax.axhline(
        out_sqnr,
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"model output {out_sqnr:.1f} dB",
    )
    ax.set_title(
        f"{Path(report.get('model', '')).name}: {report.get('scheme')}, "
        f"{report.get('calibrator')} (red: worst layers, grey: kept float)",
        fontsize=9,
    )
    ax.legend(loc="lower right", fontsize=7)
    for k, h in enumerate(hists):
        hx = fig.add_subplot(grid[1, k])
        edges = h["edges"]
        hx.stairs(h["counts"], edges, fill=True, color="tab:blue", alpha=0.6)
        hx.set_yscale("log")
        lo, hi = h["clip_range"]
        rlo, rhi = h["representable_range"]
        hx.axvspan(rlo, rhi, color="tab:green", alpha=0.08, label="int8 range")
        hx.axvline(lo, color="tab:red", linewidth=1.2, label="clipping range")
        hx.axvline(hi, color="tab:red", linewidth=1.2)
        hx.set_title(f"{h['name']} ({h['sqnr_db']:.1f} dB)", fontsize=8)
        hx.tick_params(labelsize=6)
        if k == 0:
            hx.legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
