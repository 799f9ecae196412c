"""Where tvm-intq int8 executes more instructions than LiteRT's XNNPACK int8, by kernel kind,
on the emulated Neoverse-N1 (issue 19: what the kernels must close).

    python bench/kernel_gaps.py [--models bundled palm_detection_lite ...] [--out bench/results]

On models of bench/run.py that have a LiteRT int8 version (the bundled model, the MediaPipe
detectors), one warm inference each, block profiles from the QEMU plugin:

* ours: every kernel of the int8 library (:func:`tvm_intq.targets.mca.kernel_instructions`:
  instructions and mnemonics per kernel, by its symbol), grouped by kind from its name;
* XNNPACK: LiteRT's library by function (:func:`tvm_intq.targets.peers.function_profile`:
  ``.eh_frame`` functions, and runs of hand-written assembly), grouped by kind from what the
  function executes - a heuristic, stated with the table: ``sdot`` = GEMM/IGEMM microkernel
  (convolutions, the dense layer, their requantization included), ``smull``/``saddw``
  without ``sdot`` = depthwise microkernel, ``tbl``/``tbx`` = lookup table,
  ``sqrdmulh``/``mla``/``srshl`` = elementwise add / requantize, else ``smax`` = max pooling;
  the rest is the interpreter, operator dispatch and Python;
* the rest of each process (TVM's VM and runtime, libc; LiteRT's interpreter, Python) by file.

Writes ``<out>/<model>/kernel_gaps.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
KINDS = (
    "conv (dense 3x3/1x1, epilogue included)",
    "depthwise conv",
    "elementwise add / requantize",
    "pooling",
    "lookup table",
    "layout (pack/unpack/quantize)",
    "dense layer",
    "runtime, dispatch, libc, Python",
)


def our_kind(kernel: str) -> str:
    if kernel.startswith("conv2d"):
        return KINDS[0]
    if "depthwise" in kernel:  # also fused with the packing and unpacking around it
        return KINDS[1]
    if kernel.startswith("dense"):
        return KINDS[6]
    if "pool" in kernel:
        return KINDS[3]
    if "add" in kernel or "multiply" in kernel:
        return KINDS[2]
    return KINDS[5]


def xnnpack_kind(mnemonics: dict) -> str:
    def has(*names):
        return any(mnemonics.get(n, 0) > 0 for n in names)

    if has("sdot", "smmla"):
        return KINDS[0]
    if has("smull", "smlal") and has("saddw", "saddw2"):
        return KINDS[1]
    if has("tbl", "tbx"):
        return KINDS[4]
    # requantizing arithmetic before smax: an add's output clamp is an smax/smin too
    if has("sqrdmulh", "mla", "srshl"):
        return KINDS[2]
    if has("smax", "umax"):
        return KINDS[3]
    return KINDS[7]


def gaps(key: str, work: Path) -> dict:
    """The figures of one model of bench/run.py (module docstring)."""
    import run as bench_run

    from tvm_intq import api
    from tvm_intq.deploy.board_bench import plan_bench
    from tvm_intq.frontends import import_model
    from tvm_intq.targets.boards import emulated_board
    from tvm_intq.targets.insn_count import WARMUP_CALLS, run_counted
    from tvm_intq.targets.mca import kernel_instructions
    from tvm_intq.targets.peers import function_profile, peer_cpu, peer_instructions

    m = bench_run.models()[key]
    work.mkdir(parents=True, exist_ok=True)
    model = m["onnx"](work) if callable(m["onnx"]) else m["onnx"]
    calib_file = m["calib"](work) if callable(m["calib"]) else m["calib"]
    _, info = import_model(model)
    calib = api.load_samples(calib_file, info, "calibration data")
    plan = plan_bench(model, calib, "aarch64", check_samples=1, out_dir=work)
    board, x = emulated_board("aarch64"), plan.batches[0]
    lib = plan.libraries["int8"]
    run = run_counted(lib, board, x, calls=WARMUP_CALLS + 2, blocks=True)
    ours = {k: 0.0 for k in KINDS}
    kernels = kernel_instructions(lib, run, board)
    for name, k in kernels.items():
        ours[our_kind(name)] += k["instructions"]
    total = run.warm_instructions(WARMUP_CALLS)
    # everything outside the kernels (VM, runtime, libc), per warm call: the warm call's count
    # less the kernels' share of the profile (which averages all calls)
    ours[KINDS[7]] += total - sum(k["instructions"] for k in kernels.values())

    count = peer_instructions(
        m["peer_models"]["litert-int8"], x, "litert", peer_cpu("aarch64"), blocks=True
    )
    theirs = {k: 0.0 for k in KINDS}
    functions = function_profile(count, "litert_common")
    for f in functions:
        theirs[xnnpack_kind(f["mnemonics"])] += f["instructions"]
    theirs[KINDS[7]] += count.instructions - sum(f["instructions"] for f in functions)
    return {
        "name": m["name"],
        "cpu": peer_cpu("aarch64"),
        "tvm_intq_int8": {"instructions": total, "kinds": ours},
        "litert_int8": {"instructions": count.instructions, "kinds": theirs},
        "our_kernels": {
            k: {
                "instructions": round(v["instructions"]),
                "kind": our_kind(k),
                "top_mnemonics": {mn: round(c) for mn, c in list(v["mnemonics"].items())[:8]},
            }
            for k, v in kernels.items()
        },
        "xnnpack_functions": [
            {
                "start": hex(f["start"]),
                "assembly": f["assembly"],
                "instructions": round(f["instructions"]),
                "kind": xnnpack_kind(f["mnemonics"]),
                "top_mnemonics": {mn: round(c) for mn, c in list(f["mnemonics"].items())[:8]},
            }
            for f in functions[:20]
        ],
    }


def markdown(data: dict) -> str:
    ours, theirs = data["tvm_intq_int8"], data["litert_int8"]
    lines = [
        f"# {data['name']}: tvm-intq int8 against LiteRT (XNNPACK) int8 by kernel kind, "
        f"emulated {data['cpu']}",
        "",
        "Instructions of one warm inference (QEMU plugin, block profiles). XNNPACK's kinds are "
        "read from what each function executes (bench/kernel_gaps.py: sdot = GEMM/IGEMM, "
        "smull+saddw = depthwise, tbl = lookup, sqrdmulh/mla/srshl = add/requantize, "
        "else smax = pooling).",
        "",
        "| kind | tvm-intq int8 | LiteRT int8 | ours - theirs |",
        "|---|---:|---:|---:|",
    ]
    for k in KINDS:
        a, b = ours["kinds"][k], theirs["kinds"][k]
        lines.append(f"| {k} | {a:,.0f} | {b:,.0f} | {a - b:+,.0f} |")
    lines.append(
        f"| total | {ours['instructions']:,} | {theirs['instructions']:,} | "
        f"{ours['instructions'] - theirs['instructions']:+,} |"
    )
    lines += ["", "Our kernels (instructions per inference, most executed mnemonics):", ""]
    lines += ["| kernel | kind | instructions | top mnemonics |", "|---|---|---:|---|"]
    for k, v in list(data["our_kernels"].items())[:25]:
        top = ", ".join(f"{m} {c:,}" for m, c in list(v["top_mnemonics"].items())[:5])
        lines.append(f"| {k} | {v['kind']} | {v['instructions']:,} | {top} |")
    lines += ["", "XNNPACK's functions (LiteRT's library; * hand-written assembly):", ""]
    lines += ["| function | kind | instructions | top mnemonics |", "|---|---|---:|---|"]
    for f in data["xnnpack_functions"][:12]:
        top = ", ".join(f"{m} {c:,}" for m, c in list(f["top_mnemonics"].items())[:5])
        star = "*" if f["assembly"] else ""
        lines.append(f"| {f['start']}{star} | {f['kind']} | {f['instructions']:,} | {top} |")
    lines += ["", f"Command: `{data['command']}`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bundled"])
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--work", default=str(HERE / "work" / "kernel_gaps"))
    args = parser.parse_args(argv)
    for key in args.models:
        data = gaps(key, Path(args.work) / key)
        data["command"] = f"python bench/kernel_gaps.py --models {key}"
        out = Path(args.out) / data["name"]
        out.mkdir(parents=True, exist_ok=True)
        (out / "kernel_gaps.json").write_text(json.dumps(data, indent=1) + "\n")
        (out / "kernel_gaps.md").write_text(markdown(data))
        print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
