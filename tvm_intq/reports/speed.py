"""Speed reports: board benches, host benches against ONNX Runtime, emulated instruction counts."""

from __future__ import annotations

from pathlib import Path

from tvm_intq.reports.files import save_figure, table, write_json


def bench_table(result: dict) -> str:
    """The console report of ``tvm-intq bench`` (plain data from
    :func:`tvm_intq.deploy.board_bench.bench`)."""
    where = f"key '{result['key']}' at tracker {result['tracker']}"
    lines = [f"bench {result['model']}  target {result['target']}  {where}"]
    if result.get("emulated"):
        lines.append(f"EMULATED BOARD ({result.get('board_kind')}): {result['note']}")
    rows = []
    for precision in ("int8", "fp32"):
        r = result.get("results", {}).get(precision)
        if not r:
            continue
        rows.append(
            {
                "precision": precision,
                "board": r["board"] + (" (emulated)" if r.get("emulated") else ""),
                "p50 ms": r["p50_ms"],
                "p90 ms": r["p90_ms"],
                "p99 ms": r["p99_ms"],
                "runs": f"{r['repeat']}x{r['number']}",
                "outputs": ("match" if r["outputs_match"] else "DIFFER") + f" ({r['check']}, "
                f"{r['outputs_checked']} batches)",
            }
        )
    if rows:
        lines.append(
            table(rows, ["precision", "board", "p50 ms", "p90 ms", "p99 ms", "runs", "outputs"])
        )
    ratio = result.get("ratio_int8_over_fp32")
    if ratio is not None:
        label = " (emulated, not a hardware figure)" if result.get("emulated") else ""
        lines.append(f"int8/fp32 latency ratio (p50): {ratio:.3f}{label}")
    for lost in result.get("boards_lost", []):
        lines.append(f"board lost: {lost}")
    return "\n".join(lines)


def emulated_markdown(fig: dict) -> str:
    """Deterministic figures on an emulated board
    (:func:`tvm_intq.deploy.emulated_figures.emulated_figures`)
    as a Markdown table, int8 vs fp32; the console prints it as is."""
    progs, ratio = fig["programs"], fig.get("fp32_over_int8")
    precisions = [p for p in ("int8", "fp32") if p in progs]
    head = "| figure | " + " | ".join(precisions) + (" | fp32 / int8 |" if ratio else " |")
    lines = [
        f"Emulated board {fig['board']} ({fig['emulator']}):",
        "",
        head,
        "|---|" + "---:|" * (len(precisions) + (1 if ratio else 0)),
    ]

    def row(label, values, r):
        cells = " | ".join(f"{v:,.0f}" for v in values)
        lines.append(
            f"| {label} | {cells} |" + (f" {r:.2f}x |" if r else (" - |" if ratio else ""))
        )

    row(
        fig["instructions_label"],
        [progs[p]["instructions"] for p in precisions],
        ratio and ratio["instructions"],
    )
    for core, label in fig["mca_labels"].items():
        for part, what in (("total", "cycles in kernels"), ("convs", "cycles in conv kernels")):
            row(
                f"{label}: {what}",
                [progs[p]["mca_cycles"][core][part] for p in precisions],
                ratio and ratio["mca_cycles"][core][part],
            )
    eff = progs.get("int8", {}).get("conv_efficiency")
    if eff:
        lines.append(
            f"| int8 conv kernels: MACs per executed instruction (peak {eff['peak']}) | "
            f"{eff['macs_per_instruction']:.2f} ({eff['peak_fraction']:.0%} of peak) |"
            + (" - | - |" if ratio else "")
        )
    lines += ["", f"Method: {fig['mca_method']}."]
    if eff:
        lines.append(
            f"Conv kernels: {eff['macs']:,} multiply-accumulates of the model's convolutions "
            f"over the {eff['instructions']:,} instructions the int8 conv kernels (padding and "
            f"epilogues included) executed; peak: {eff['peak']} MACs per instruction (aarch64 "
            "sdot 16, smmla 32; RVV widening multiply-add on int8 at LMUL 1: VLEN/8)."
        )
    if fig.get("schedules"):
        lines.append(f"Schedules: {fig['schedules']}.")
    return "\n".join(lines)


def peers_markdown(fig: dict) -> str:
    """tvm-intq against ONNX Runtime and LiteRT on the same emulated core
    (:func:`tvm_intq.deploy.emulated_figures.bench_emulated` with ``peers=True``): one row per
    configuration, instructions and llvm-mca cycles over the whole call, and each against
    tvm-intq int8; then the peers left out and why."""
    cores = fig["peer_cores"]
    configs = fig["configs"]
    ours = configs.get("tvm-intq-int8")
    lines = [
        f"Against ONNX Runtime and LiteRT on the same emulated core ({fig['cpu']}), one warm "
        "inference, 1 thread, the whole call counted (runtime, libc, kernels):",
        "",
        "| configuration | instructions | int8 dot-product instructions | "
        + " | ".join(f"llvm-mca cycles, {c}" for c in cores)
        + " | instructions / tvm-intq int8 | "
        + " | ".join(f"{c} cycles / tvm-intq int8" for c in cores)
        + " |",
        "|---|---:|---:|" + "---:|" * (2 * len(cores) + 1),
    ]
    for name, f in configs.items():
        dots = ", ".join(f"{n:,} {m}" for m, n in f.get("dot_instructions", {}).items()) or "-"
        cyc = " | ".join(f"{f['mca_cycles'][c]:,}" for c in cores)
        if ours:
            rel = f"{f['instructions'] / ours['instructions']:.2f}x | " + " | ".join(
                f"{f['mca_cycles'][c] / ours['mca_cycles'][c]:.2f}x" for c in cores
            )
        else:
            rel = " | ".join("-" for _ in range(len(cores) + 1))
        lines.append(f"| {name} | {f['instructions']:,} | {dots} | {cyc} | {rel} |")
    for core, cmp in fig.get("against_best_peer", {}).items():
        if cmp:
            lines.append(
                f"\nBest peer int8 ({cmp['best_peer']}) against tvm-intq int8 on {core}: "
                f"{cmp['instructions']:.2f}x the instructions, "
                + (f"{cmp['mca_cycles']:.2f}x the cycles" if cmp["mca_cycles"] else "cycles -")
                + " (above 1: tvm-intq int8 executes fewer)."
            )
    for name, why in fig.get("peer_notes", {}).items():
        lines.append(f"\n- {name} left out: {why}")
    return "\n".join(lines)


def plot_emulated(figs: dict, path) -> Path:
    """Bars: how many times fewer instructions / estimated cycles int8 needs than fp32, per
    figure, one panel per target (``figs``: ``{target: emulated figures}``); for a target with
    peers a second panel: each configuration's instructions and llvm-mca cycles (whole call)
    over tvm-intq int8's (above 1: tvm-intq int8 executes fewer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(t, f, "ratio") for t, f in figs.items() if f.get("fp32_over_int8")]
    panels += [(t, f, "peers") for t, f in figs.items() if f.get("configs")]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (target, f, kind) in zip(axes[0], panels):
        if kind == "peers":
            _peers_panel(ax, target, f)
            continue
        r = f["fp32_over_int8"]
        labels = ["qemu\ninstructions"] + [
            f"{c}\n{part}" for c in f["mca_labels"] for part in ("total", "convs")
        ]
        values = [r["instructions"]] + [
            r["mca_cycles"][c][part] or 0 for c in f["mca_labels"] for part in ("total", "convs")
        ]
        bars = ax.bar(
            range(len(values)), values, color=["tab:blue"] + ["tab:orange"] * (len(values) - 1)
        )
        ax.bar_label(bars, fmt="%.2fx", fontsize=7)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels(labels, fontsize=7, rotation=30)
        ax.set_xlabel(
            "blue: instructions executed (qemu); orange: cycles, llvm-mca estimate "
            "(total / conv kernels)",
            fontsize=7,
        )
        ax.set_ylabel("fp32 / int8 (higher: int8 cheaper)")
        ax.set_title(f"{target} ({f['board']})", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def _peers_panel(ax, target: str, f: dict) -> None:
    configs, core = f["configs"], f["peer_cores"][0]
    ours = configs.get("tvm-intq-int8")
    if not ours:
        return
    names = list(configs)
    width = 0.4
    for k, (what, color) in enumerate((("instructions", "tab:blue"), ("cycles", "tab:orange"))):
        values = [
            c["instructions"] / ours["instructions"]
            if what == "instructions"
            else c["mca_cycles"][core] / ours["mca_cycles"][core]
            for c in configs.values()
        ]
        bars = ax.bar([i + k * width for i in range(len(names))], values, width, color=color)
        ax.bar_label(bars, fmt="%.2fx", fontsize=6)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks([i + width / 2 for i in range(len(names))])
    ax.set_xticklabels(names, fontsize=7, rotation=30)
    ax.set_xlabel(
        f"blue: instructions (qemu); orange: llvm-mca cycles on {core}, whole call", fontsize=7
    )
    ax.set_ylabel("over tvm-intq int8 (above 1: ours fewer)")
    ax.set_title(f"{target}: against ONNX Runtime and LiteRT on {f['cpu']}", fontsize=9)


def boards_table(rows: list[dict]) -> str:
    """``tvm-intq boards``: the board kinds and how to bring each up."""
    return table(rows, ["board", "key", "target", "kind", "status"])


# ---------------------------------------------------------------------------------------------
# Benchmark (bench/run.py)
# ---------------------------------------------------------------------------------------------
def write_emulated(data: dict, folder) -> list[Path]:
    """``emulated.json``, ``emulated.md`` and ``emulated.png`` in ``folder``: the deterministic
    figures of one model on the emulated boards (``data["targets"]``: target -> figures)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# {data['model']}: int8 vs fp32 on the emulated boards (deterministic figures, "
        "not wall time)",
        "",
    ]
    for target, fig in data["targets"].items():
        lines += [f"## {target}", ""]
        if fig.get("note"):
            lines += [fig["note"], ""]
        lines += [emulated_markdown(fig), ""]
        if fig.get("configs"):
            lines += [peers_markdown(fig), ""]
        lines += [f"Same figures: `{fig['command']}`", ""]
    lines += [f"Command: `{data['command']}`", ""]
    md = folder / "emulated.md"
    md.write_text("\n".join(lines))
    return [
        write_json(data, folder / "emulated.json"),
        md,
        plot_emulated(data["targets"], folder / "emulated.png"),
    ]


# ---------------------------------------------------------------------------------------------
# The bench on real models (bench/run.py): one row per model
# ---------------------------------------------------------------------------------------------
SHORT = {
    "onnxruntime fp32": "ORT fp32",
    "onnxruntime int8": "ORT int8",
    "tvm fp32": "TVM fp32",
    "tvm-intq int8 no db": "tvm-intq no db",
    "tvm-intq int8 tuned": "tvm-intq tuned",
}


def _ms(row: dict, config: str, threads: str) -> float | None:
    r = row["latency"].get(config, {}).get(threads)
    return None if r is None else r["median_ms"]


def _cell(v, fmt="{:.3g}") -> str:
    return "-" if v is None else fmt.format(v)


def _ratio(num, den) -> str:
    return "-" if num is None or den is None else f"{num / den:.2f}x"


def models_bench_markdown(data: dict) -> str:
    """The bench on real models (``bench/run.py``'s plain data) as a Markdown page: a latency
    table per thread count, the speed-ups over ONNX Runtime, compile time and memory. Without
    a ``tvm-intq int8 tuned`` configuration (``--minutes 0``) the tuned columns are left out."""
    minutes = f"{data['minutes']:g}"
    configs = data["configs"]
    tuned = "tvm-intq int8 tuned" in configs
    mine = ["tvm-intq int8 no db"] + (["tvm-intq int8 tuned"] if tuned else [])
    heads = [SHORT.get(c, c) + (f" {minutes} min" if c.endswith("tuned") else "") for c in configs]
    ratio_heads = [
        f"{'tuned' if c.endswith('tuned') else 'no db'} vs {peer}"
        for c in mine
        for peer in ("ORT int8", "ORT fp32")
    ]
    tuned_text = (
        f"; *tuned*: after `tvm-intq tune --minutes {minutes} --threads 1` from an empty database"
        if tuned
        else ""
    )
    lines = [
        "# tvm-intq vs ONNX Runtime and TVM on real models (batch 1, this machine)",
        "",
        f"ms per call, median of {data['rounds']} interleaved rounds. *tvm-intq no db*: "
        f"`tvm-intq compile` with no tuning database{tuned_text}. Speed-ups: the other's "
        "ms / tvm-intq's ms (above 1: tvm-intq faster). Code version "
        f"`{data['version']}`.",
    ]
    for t in (str(t) for t in data["threads"]):
        lines += [
            "",
            f"## {t} thread{'s' if t != '1' else ''}",
            "",
            "| model | " + " | ".join(heads + ratio_heads) + " |",
            "|---|" + "---:|" * (len(heads) + len(ratio_heads)),
        ]
        for row in data["rows"]:
            ms = {c: _ms(row, c, t) for c in configs}
            ratios = [
                _ratio(ms.get(peer), ms.get(c))
                for c in mine
                for peer in ("onnxruntime int8", "onnxruntime fp32")
            ]
            lines.append(
                f"| {row['key']} | " + " | ".join([_cell(ms[c]) for c in configs] + ratios) + " |"
            )
    tune_heads = f" | tune {minutes} min | tvm-intq tuned | tuned kernels" if tuned else ""
    lines += [
        "",
        "## Compile",
        "",
        "Wall seconds / peak resident MB of the process; tvm-intq's compile calibrates, "
        "quantizes, evaluates and builds (its phases below).",
        "",
        f"| model | calibration samples | ORT quantize | TVM fp32 | tvm-intq no db{tune_heads} |",
        "|---|---|---:|---:|---:|" + ("---:|---:|---|" if tuned else ""),
    ]

    def sm(facts):
        return "-" if not facts else f"{facts['seconds']:.0f} s / {facts['peak_mb']:.0f} MB"

    for row in data["rows"]:
        c = row.get("compile", {})
        cov = (c.get("tvm-intq int8 tuned") or {}).get("coverage") or "-"
        cov = cov.split(" (")[0].replace("tuned kernels: ", "")
        tune = c.get("tune")
        cells = f" {sm(tune)} | {sm(c.get('tvm-intq int8 tuned'))} | {cov} |" if tuned else ""
        lines.append(
            f"| {row['key']} | {row['calibration']} | {sm(c.get('onnxruntime int8'))} | "
            f"{sm(c.get('tvm fp32'))} | {sm(c.get('tvm-intq int8 no db'))} |{cells}"
        )
    lines += ["", "tvm-intq no db, compile phases:", ""]
    for row in data["rows"]:
        ph = (row.get("compile", {}).get("tvm-intq int8 no db") or {}).get("phases")
        if ph:
            lines.append(f"- {row['key']}: {ph}")
    summaries = [
        (row["key"], row["compile"]["tune"].get("summary"))
        for row in data["rows"]
        if row.get("compile", {}).get("tune", {}).get("summary")
    ]
    if summaries:
        lines += ["", "Tuning:", ""] + [f"- {k}: {s}" for k, s in summaries]
    errors = [(row["key"], n, e) for row in data["rows"] for n, e in row.get("errors", {}).items()]
    if errors:
        lines += ["", "Failed to run:", ""] + [f"- {k}, {n}: {e}" for k, n, e in errors]
    m = data["machine"]
    lines += [
        "",
        f"Machine: {m['cpu']} (LLVM: {m['llvm_cpu']}), {m['cores_available']} cores "
        f"available, AVX512-VNNI: {'yes' if m['avx512_vnni'] else 'no'}; load average "
        f"{', '.join(f'{x:.2f}' for x in m['load_average'])} at the start of the last run "
        f"(each row's own in results.json); TVM {m['tvm']}, ONNX Runtime {m['onnxruntime']}, "
        f"Python {m['python']}.",
        "",
        f"Timing: {data['timing']}.",
        "",
        f"Command: `{data['command']}`",
        "",
    ]
    return "\n".join(lines)


def plot_models_bench(data: dict, path) -> Path:
    """Bars per model: speed relative to ONNX Runtime int8 (its ms / the configuration's ms;
    log scale, above 1 faster than it), one panel per thread count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, configs = data["rows"], data["configs"]
    threads = [str(t) for t in data["threads"]]
    width = 0.8 / len(configs)
    fig, axes = plt.subplots(
        len(threads), 1, figsize=(max(7, 0.9 * len(rows) + 2), 3.6 * len(threads)), squeeze=False
    )
    for ax, t in zip(axes[:, 0], threads):
        for i, c in enumerate(configs):
            xs, ys = [], []
            for j, row in enumerate(rows):
                ref, v = _ms(row, "onnxruntime int8", t), _ms(row, c, t)
                if ref is not None and v is not None:
                    xs.append(j + i * width)
                    ys.append(ref / v)
            label = SHORT.get(c, c) + (f" {data['minutes']:g} min" if c.endswith("tuned") else "")
            ax.bar(xs, ys, width, label=label)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks([j + width * (len(configs) - 1) / 2 for j in range(len(rows))])
        ax.set_xticklabels([r["key"] for r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("ORT int8 ms / ms (higher: faster)", fontsize=8)
        ax.set_title(f"batch 1, {t} thread{'s' if t != '1' else ''}", fontsize=9)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(configs), fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save_figure(fig, path, dpi=110)


def write_models_bench(data: dict, folder) -> list[Path]:
    """``results.json``, ``results.md`` and ``results.png`` in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / "results.md"
    md.write_text(models_bench_markdown(data))
    out = [write_json(data, folder / "results.json"), md]
    if data["rows"]:
        out.append(plot_models_bench(data, folder / "results.png"))
    return out
