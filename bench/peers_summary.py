"""One table over the models of bench/results/*/emulated.json: tvm-intq int8 against the better
of ONNX Runtime int8 and LiteRT int8 on the emulated Neoverse-N1, and the int8 conv kernels'
MACs per executed instruction on aarch64 and riscv64 (issue 19's "done when").

    python bench/peers_summary.py [--results bench/results]   -> bench/results/peers_summary.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORE = "neoverse-n1"


def rows(results: Path) -> list[dict]:
    out = []
    for path in sorted(results.glob("*/emulated.json")):
        data = json.loads(path.read_text())
        arm, rv = data["targets"].get("aarch64", {}), data["targets"].get("riscv64", {})
        configs = arm.get("configs", {})
        ours = configs.get("tvm-intq-int8")
        if not ours:
            continue
        peers = {n: configs[n] for n in ("onnxruntime-int8", "litert-int8") if n in configs}
        best = min(peers, key=lambda n: peers[n]["mca_cycles"][CORE]) if peers else None
        row = {
            "model": data["model"],
            "note": arm.get("note", ""),
            "ours": ours,
            "best": best,
            "peer": peers.get(best),
            "arm_eff": arm.get("programs", {}).get("int8", {}).get("conv_efficiency"),
            "rv_eff": rv.get("programs", {}).get("int8", {}).get("conv_efficiency"),
        }
        out.append(row)
    return out


def markdown(table: list[dict]) -> str:
    lines = [
        f"# tvm-intq int8 against the better peer int8 on the emulated {CORE} "
        "(bench/results/<model>/emulated.md)",
        "",
        "Instructions and llvm-mca cycles of one warm inference over the whole call (runtime "
        "included), 1 thread; peer / ours above 1: tvm-intq int8 executes fewer. Conv kernels: "
        "the model's convolution multiply-accumulates per instruction the int8 conv kernels "
        "executed, against the instruction's peak (aarch64 sdot 16; riscv64 vwmacc on int8 at "
        "VLEN 128, LMUL 1: 16).",
        "",
        "| model | tvm-intq int8 instructions | best peer int8 | its instructions | peer / ours "
        f"| ours, {CORE} cycles | peer, {CORE} cycles | peer / ours | aarch64 conv MACs/insn "
        "| riscv64 conv MACs/insn |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        o, p = r["ours"], r["peer"]

        def eff(e):
            if not e:
                return "-"
            return f"{e['macs_per_instruction']:.2f} ({e['peak_fraction']:.0%})"

        if p:
            peer = (
                f"{r['best']} | {p['instructions']:,} | "
                f"{p['instructions'] / o['instructions']:.2f}x | {o['mca_cycles'][CORE]:,} | "
                f"{p['mca_cycles'][CORE]:,} | "
                f"{p['mca_cycles'][CORE] / o['mca_cycles'][CORE]:.2f}x"
            )
        else:
            peer = f"- | - | - | {o['mca_cycles'][CORE]:,} | - | -"
        lines.append(
            f"| {r['model']} | {o['instructions']:,} | {peer} | {eff(r['arm_eff'])} | "
            f"{eff(r['rv_eff'])} |"
        )
    lines += ["", "Inputs:", ""]
    lines += [f"- {r['model']}: {r['note'] or 'its own input'}" for r in table]
    lines += ["", "Command: `python bench/peers_summary.py`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    text = markdown(rows(Path(args.results)))
    (Path(args.results) / "peers_summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
