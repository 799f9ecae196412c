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


def _save(fig, path, dpi: int) -> Path:
    """Write a matplotlib figure as PNG (creating its folder) and release it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
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
    return _save(fig, path, dpi=120)


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
    if report.get("float_layers"):
        lines.append(f"float layers ({len(report['float_layers'])}): " + "; ".join(
            f"{f['name']} ({f['reason']})" for f in report["float_layers"]))
    acc = report.get("accumulators")
    if acc:
        widest = max(acc, key=lambda a: a["with_bias_bits"])
        over = [a["name"] for a in acc if a["overflows_int32"]]
        lines.append(f"accumulators: widest {widest['with_bias_bits']} bits ({widest['name']}); "
                     + (f"can overflow int32: {', '.join(over)}" if over else "none can overflow int32"))
    return "\n".join(lines)


def layer_table(report: dict) -> str:
    """Per-layer error against float (S2 Eqs. 23-25) as a text table."""
    rows = [{"layer": lay["name"], "op": lay["op"], "precision": lay["precision"],
             "SQNR dB": lay["sqnr_db"], "Manhattan": lay.get("manhattan"),
             "Euclidean": lay.get("euclidean")} for lay in report["layers"]]
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
    colors = ["tab:gray" if lay["precision"] == "float" else
              "tab:red" if lay["name"] in worst else "tab:blue" for lay in layers]
    ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels([f"{lay['name']}\n{lay['op'][:24]}" for lay in layers], rotation=90, fontsize=6)
    ax.set_ylabel("SQNR (dB) vs float")
    out_sqnr = report.get("output_sqnr_db", 0.0)
    ax.axhline(out_sqnr, color="black", linestyle="--", linewidth=1,
               label=f"model output {out_sqnr:.1f} dB")
    ax.set_title(f"{Path(report.get('model', '')).name}: {report.get('scheme')}, "
                 f"{report.get('calibrator')} (red: worst layers, grey: kept float)", fontsize=9)
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
    return _save(fig, path, dpi=110)


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


def bench_table(result: dict) -> str:
    """The console report of ``tvm-intq bench`` (plain data from :func:`tvm_intq.bench.bench`)."""
    where = f"key '{result['key']}' at tracker {result['tracker']}"
    lines = [f"bench {result['model']}  target {result['target']}  {where}"]
    if result.get("emulated"):
        lines.append(f"EMULATED BOARD ({result.get('board_kind')}): {result['note']}")
    rows = []
    for precision in ("int8", "fp32"):
        r = result.get("results", {}).get(precision)
        if not r:
            continue
        rows.append({
            "precision": precision, "board": r["board"] + (" (emulated)" if r.get("emulated") else ""),
            "p50 ms": r["p50_ms"], "p90 ms": r["p90_ms"], "p99 ms": r["p99_ms"],
            "runs": f"{r['repeat']}x{r['number']}",
            "outputs": ("match" if r["outputs_match"] else "DIFFER") + f" ({r['check']}, "
                       f"{r['outputs_checked']} batches)",
        })
    if rows:
        lines.append(table(rows, ["precision", "board", "p50 ms", "p90 ms", "p99 ms", "runs", "outputs"]))
    ratio = result.get("ratio_int8_over_fp32")
    if ratio is not None:
        label = " (emulated, not a hardware figure)" if result.get("emulated") else ""
        lines.append(f"int8/fp32 latency ratio (p50): {ratio:.3f}{label}")
    for lost in result.get("boards_lost", []):
        lines.append(f"board lost: {lost}")
    return "\n".join(lines)


def emulated_markdown(fig: dict) -> str:
    """Deterministic figures on an emulated board (:func:`tvm_intq.emulated_figures.emulated_figures`)
    as a Markdown table, int8 vs fp32; the console prints it as is."""
    progs, ratio = fig["programs"], fig.get("fp32_over_int8")
    precisions = [p for p in ("int8", "fp32") if p in progs]
    head = "| figure | " + " | ".join(precisions) + (" | fp32 / int8 |" if ratio else " |")
    lines = [f"Emulated board {fig['board']} ({fig['emulator']}):", "", head,
             "|---|" + "---:|" * (len(precisions) + (1 if ratio else 0))]

    def row(label, values, r):
        cells = " | ".join(f"{v:,.0f}" for v in values)
        lines.append(f"| {label} | {cells} |" + (f" {r:.2f}x |" if r else (" - |" if ratio else "")))

    row(fig["instructions_label"], [progs[p]["instructions"] for p in precisions],
        ratio and ratio["instructions"])
    for core, label in fig["mca_labels"].items():
        for part, what in (("total", "cycles in kernels"), ("convs", "cycles in conv kernels")):
            row(f"{label}: {what}", [progs[p]["mca_cycles"][core][part] for p in precisions],
                ratio and ratio["mca_cycles"][core][part])
    lines += ["", f"Method: {fig['mca_method']}."]
    if fig.get("schedules"):
        lines.append(f"Schedules: {fig['schedules']}.")
    return "\n".join(lines)


def plot_emulated(figs: dict, path) -> Path:
    """Bars: how many times fewer instructions / estimated cycles int8 needs than fp32, per
    figure, one panel per target (``figs``: ``{target: emulated figures}``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = {t: f for t, f in figs.items() if f.get("fp32_over_int8")}
    fig, axes = plt.subplots(1, len(figs), figsize=(6.5 * len(figs), 4.5), squeeze=False)
    for ax, (target, f) in zip(axes[0], figs.items()):
        r = f["fp32_over_int8"]
        labels = ["qemu\ninstructions"] + [f"{c}\n{part}" for c in f["mca_labels"]
                                            for part in ("total", "convs")]
        values = [r["instructions"]] + [r["mca_cycles"][c][part] or 0 for c in f["mca_labels"]
                                        for part in ("total", "convs")]
        bars = ax.bar(range(len(values)), values, color=["tab:blue"] + ["tab:orange"] * (len(values) - 1))
        ax.bar_label(bars, fmt="%.2fx", fontsize=7)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels(labels, fontsize=7, rotation=30)
        ax.set_xlabel("blue: instructions executed (qemu); orange: cycles, llvm-mca estimate "
                      "(total / conv kernels)", fontsize=7)
        ax.set_ylabel("fp32 / int8 (higher: int8 cheaper)")
        ax.set_title(f"{target} ({f['board']})", fontsize=9)
    fig.tight_layout()
    return _save(fig, path, dpi=120)


def boards_table(rows: list[dict]) -> str:
    """``tvm-intq boards``: the board kinds and how to bring each up."""
    return table(rows, ["board", "key", "target", "kind", "status"])


# ---------------------------------------------------------------------------------------------
# Benchmark (bench/run.py)
# ---------------------------------------------------------------------------------------------
def bench_markdown(data: dict) -> str:
    """The benchmark of one model as a Markdown page: latency table, ratios, memory, machine."""
    threads = [str(t) for t in data["threads"]]
    lines = [f"# {data['model']}: batch {data['batch']}, {data['trials_per_kernel']} tuning "
             "trials per kernel", "",
             "| configuration | " + " | ".join(f"{t} thread{'s' if t != '1' else ''} (ms)"
                                              for t in threads) + " | top-1 |",
             "|---|" + "---:|" * (len(threads) + 1)]
    for name, res in data["latency"].items():
        top1 = next((r.get("top1") for r in res.values() if r.get("top1") is not None), None)
        lines.append(f"| {name} | " + " | ".join(f"{res[t]['median_ms']:.4f}" for t in threads)
                     + f" | {'-' if top1 is None else f'{100 * top1:.1f} %'} |")
    lines += ["", "Speed-up of tvm-intq int8 (other median / ours):", "",
              "| vs | " + " | ".join(f"{t} thr" for t in threads) + " |",
              "|---|" + "---:|" * len(threads)]
    won = data.get("rounds_tvm_intq_int8_faster", {})
    for name, res in data["speedup_of_tvm_intq_int8"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{res[t]:.2f}x" + (f" ({won[name][t]} of {data['rounds']} rounds faster)"
                                if name in won else "") for t in threads) + " |")
    mem = data.get("memory", {})
    if mem:
        lines += ["", "| memory | fp32 | int8 |", "|---|---:|---:|"]
        for key in ("weight_bytes", "peak_activation_bytes"):
            lines.append(f"| {key.replace('_', ' ')} | {mem['fp32'][key]:,} | {mem['int8'][key]:,} |")
    for name, cov in data.get("tuning_coverage", {}).items():
        lines += ["", f"{name}: " + "; ".join(cov)]
    m = data["machine"]
    lines += ["", f"Machine: {m['cpu']} (LLVM: {m['llvm_cpu']}), {m['cores_available']} cores "
              f"available, AVX512-VNNI: {'yes' if m['avx512_vnni'] else 'no'}; load average "
              f"{', '.join(f'{x:.2f}' for x in m['load_average'])} before, "
              f"{', '.join(f'{x:.2f}' for x in data['load_average_after'])} after; "
              f"TVM {m['tvm']}, ONNX Runtime {m['onnxruntime']}, Python {m['python']}; {m['date']}.",
              "", f"Timing: {data['timing']}.", "", f"Command: `{data['command']}`", ""]
    return "\n".join(lines)


def plot_bench(data: dict, path) -> Path:
    """Grouped bars: median latency per configuration, one group per thread count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(data["latency"])
    threads = [str(t) for t in data["threads"]]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, name in enumerate(names):
        values = [data["latency"][name][t]["median_ms"] for t in threads]
        bars = ax.bar([j + i * width for j in range(len(threads))], values, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(threads))])
    ax.set_xticklabels([f"{t} thread{'s' if t != '1' else ''}" for t in threads])
    ax.set_ylabel("median latency (ms), lower is better")
    ax.set_title(f"{data['model']}, batch {data['batch']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path, dpi=120)


def write_bench(data: dict, folder) -> list[Path]:
    """``results.json``, ``results.md`` and ``results.png`` in ``folder``."""
    folder = Path(folder)
    md = folder / "results.md"
    folder.mkdir(parents=True, exist_ok=True)
    md.write_text(bench_markdown(data))
    return [write_json(data, folder / "results.json"), md, plot_bench(data, folder / "results.png")]


def write_emulated(data: dict, folder) -> list[Path]:
    """``emulated.json``, ``emulated.md`` and ``emulated.png`` in ``folder``: the deterministic
    figures of one model on the emulated boards (``data["targets"]``: target -> figures)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"# {data['model']}: int8 vs fp32 on the emulated boards (deterministic figures, "
             "not wall time)", ""]
    for target, fig in data["targets"].items():
        lines += [f"## {target}", "", emulated_markdown(fig), "", f"Same figures: `{fig['command']}`", ""]
    lines += [f"Command: `{data['command']}`", ""]
    md = folder / "emulated.md"
    md.write_text("\n".join(lines))
    return [write_json(data, folder / "emulated.json"), md,
            plot_emulated(data["targets"], folder / "emulated.png")]


# Accuracy table (issue #7, eval/run.py): plain data in, JSON/Markdown/PNG out.
ACCURACY_COLUMNS = ["float", "percentile", "minmax", "kl", "mse", "redistribution",
                    "symmetric-kl", "pow2", "auto", "hybrid-precision", "ort-minmax",
                    "ort-entropy"]
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
        out.append(f"hybrid-asym + redistribution vs symmetric-KL: {d:+.2f} "
                   f"({'holds' if d >= 0 else 'does NOT hold'})")
    ours = [k for k in _TVM_COLUMNS if k in c and k != "hybrid-precision"]
    theirs = [k for k in ("ort-minmax", "ort-entropy") if k in c]
    if ours and theirs:
        best_o = max(ours, key=lambda k: c[k][m])
        best_t = max(theirs, key=lambda k: c[k][m])
        d = c[best_o][m] - c[best_t][m]
        out.append(f"best all-int8 tvm-intq ({best_o}) vs best ONNX Runtime ({best_t}): {d:+.2f} "
                   f"({'holds' if d >= 0 else 'does NOT hold'})")
    if "hybrid-precision" in c and "float" in c:
        d = c["float"][m] - c["hybrid-precision"][m]
        n = c["hybrid-precision"].get("num_float_layers")
        out.append(f"hybrid precision: {d:.2f} points below float with {n} float layer(s) "
                   f"({'within 0.5' if d <= 0.5 else 'NOT within 0.5'})")
    return out


def accuracy_markdown(data: dict) -> str:
    rows = data["rows"]
    head = "| model (metric, %) | " + " | ".join(ACCURACY_COLUMNS) + " |"
    lines = ["# Accuracy: float vs int8, tvm-intq and ONNX Runtime", "",
             "Task metric on the evaluation set (higher is better). tvm-intq columns: "
             "hybrid-asym with the named calibrator, `symmetric-kl` (S0/S2 baseline), `pow2` "
             "(percentile), `auto` (per-layer scheme), `hybrid-precision` (percentile, "
             "`--float-layers auto`, float layer count in brackets). ONNX Runtime: "
             "`quantize_static` QDQ per-channel int8, same calibration inputs.", "",
             head, "|" + "---|" * (len(ACCURACY_COLUMNS) + 1)]
    for r in rows:
        lines.append(f"| {r['model']} ({r['metric']}) | "
                     + " | ".join(_accuracy_cell(r, c) for c in ACCURACY_COLUMNS) + " |")
    lines += ["", "Output SQNR against float (dB):", "", head.replace("(metric, %)", ""),
              "|" + "---|" * (len(ACCURACY_COLUMNS) + 1)]
    for r in rows:
        lines.append(f"| {r['model']} | " + " | ".join(
            "-" if c == "float" else _accuracy_cell(r, c, "sqnr_db") for c in ACCURACY_COLUMNS)
            + " |")
    lines += ["", "## Per model", ""]
    for r in rows:
        lines += [f"### {r['model']} (`{r['file']}`, {r['quantization_points']} quantization "
                  "points)" if "quantization_points" in r else f"### {r['model']}", "",
                  f"- calibration: {r['data']['calib']}; evaluation: {r['data']['eval']}"]
        extra = [k for k in r["columns"]["float"] if k not in ("sqnr_db", "seconds")]
        lines.append("- all metrics: " + "; ".join(
            f"{col}: " + ", ".join(f"{k} {cell[k]:.2f}" for k in extra)
            for col, cell in r["columns"].items()))
        hp = r["columns"].get("hybrid-precision", {})
        if hp:
            lines.append(f"- hybrid precision target: {hp.get('target')}; float layers: "
                         f"{', '.join(hp.get('float_layers', [])) or 'none'}")
        auto = r["columns"].get("auto", {})
        if auto.get("schemes"):
            lines.append("- auto: " + ", ".join(f"{k} x{v}" for k, v in auto["schemes"].items()))
        lines += [f"- {s}" for s in accuracy_checks(r)] + [""]
    if data.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in data["notes"]] + [""]
    lines += [f"Command: `{data['command']}` ({data.get('machine', '')})"
              + (f"; this file last written by `{data['last_run']}`" if data.get("last_run") else ""), ""]
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
    return _save(fig, path, dpi=110)


def write_accuracy(data: dict, folder) -> list[Path]:
    """``results.json``, ``results.md`` and ``results.png`` of the accuracy table."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / "results.md"
    md.write_text(accuracy_markdown(data))
    return [write_json(data, folder / "results.json"), md, plot_accuracy(data, folder / "results.png")]
