"""tvm-intq int8 against what ARM users run, on the same emulated core, counted the same way
(issue 19): ONNX Runtime fp32 / int8 (MLAS) and LiteRT fp32 / int8 (XNNPACK) next to
tvm-intq int8 and TVM fp32, on the bundled model.

    python bench/peer_figures.py [--target aarch64] [--cores neoverse-n1] [--out bench/results]

Per configuration, on the core of the target's emulated board (``aarch64``: qemu -cpu
neoverse-n1; ``aarch64-i8mm``: neoverse-n2), one warm inference, 1 thread:

* ``instructions``: guest instructions counted by the QEMU plugin between markers (ours: the
  C++ runner's call of the Relax VM's ``main``; the peers: the Python call a user writes, the
  markers' own cost taken off; :mod:`tvm_intq.targets.peers`);
* ``mca_cycles[core]``: llvm-mca's steady-state cycles of every executed block x its
  executions, over *all* the code the inference ran (runtime, libc, kernels) for every
  configuration; ours also over the TVM kernels alone (``mca_kernel_cycles``, the figure
  ``tvm-intq bench --target`` reports).

Models: the bundled ONNX model (ONNX Runtime fp32; int8 = ``quantize_static`` QDQ per-channel
on tvm-intq's calibration samples, bench/run.py's ``ort_int8``) and its LiteRT versions in
bench/models/ (tools/make_peer_tflite.py: litert-torch float, ai-edge-quantizer static int8 on
the same samples). Writes ``<out>/mnist_cnn/peers.<target>.json`` (``{"configs": {NAME:
{"instructions", "mca_cycles": {core: int}, ...}}}``) and ``peers.<target>.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import run as bench_run  # noqa: E402  (bench/run.py: the model list and ONNX Runtime int8)

TFLITE = {
    "litert-fp32": ROOT / "bench" / "models" / "mnist_cnn.tflite",
    "litert-int8": ROOT / "bench" / "models" / "mnist_cnn.int8.tflite",
}
ORDER = (
    "tvm-intq-int8",
    "tvm-fp32",
    "onnxruntime-int8",
    "onnxruntime-fp32",
    "litert-int8",
    "litert-fp32",
)


def ours(m: dict, work: Path, target: str, cores) -> tuple[dict, list]:
    """tvm-intq int8 and TVM fp32 built as ``tvm-intq bench --target`` builds them, counted on
    the target's emulated board; and the input they were counted on."""
    from tvm_intq import api
    from tvm_intq.deploy.board_bench import plan_bench
    from tvm_intq.frontends import import_model
    from tvm_intq.targets.boards import emulated_board
    from tvm_intq.targets.insn_count import WARMUP_CALLS, run_counted
    from tvm_intq.targets.mca import DOT_MACS, executed_mnemonics, mca_cycles, whole_call_cycles

    _, info = import_model(m["onnx"])
    calib = api.load_samples(m["calib"], info, "calibration data")
    plan = plan_bench(m["onnx"], calib, target, fp32=True, check_samples=1, out_dir=work / target)
    board = emulated_board(target)
    inputs = plan.batches[0]
    out = {}
    for precision, name in (("int8", "tvm-intq-int8"), ("fp32", "tvm-fp32")):
        library = plan.libraries[precision]
        run = run_counted(library, board, inputs, calls=WARMUP_CALLS + 2, blocks=True)
        fig = {
            "instructions": run.warm_instructions(WARMUP_CALLS, f"{library.name} on {board.name}"),
            "instructions_per_call": list(run.per_call),
            "cpu": _cpu(board),
            "library": str(library.relative_to(ROOT))
            if library.is_relative_to(ROOT)
            else str(library),
            "mca_cycles": {},
            "mca_kernel_cycles": {},
            "mca_modelled": {},
            "mca_libraries": {},
        }
        per_call = {
            f: {k: e / len(run.per_call) for k, e in b.items()} for f, b in run.file_blocks.items()
        }
        mix = executed_mnemonics(per_call, fig["cpu"])
        fig["dot_instructions"] = {m: round(mix[m]) for m in DOT_MACS if m in mix}
        for core in cores:
            whole = whole_call_cycles(run, board, core)
            fig["mca_cycles"][core] = round(whole["total"])
            fig["mca_modelled"][core] = round(whole["modelled"], 4)
            fig["mca_libraries"][core] = {k: round(v) for k, v in whole["libraries"].items()}
            fig["instructions_by_file"] = {k: round(v) for k, v in whole["instructions"].items()}
            fig["mca_kernel_cycles"][core] = round(
                sum(mca_cycles(library, board, inputs, core, execution=run).values())
            )
        out[name] = fig
    return out, inputs


def _cpu(board) -> str:
    args = list(board.emulator.qemu_args)
    return args[args.index("-cpu") + 1]


def peer_configs(m: dict, work: Path, target: str, inputs, cores) -> dict:
    from tvm_intq.targets.peers import peer_figures

    calib_used = bench_run.calibration_part(Path(m["calib"]), work)
    models = {
        "onnxruntime-int8": bench_run.ort_int8(Path(m["onnx"]), calib_used, work),
        "onnxruntime-fp32": Path(m["onnx"]),
        **TFLITE,
    }
    out = {}
    for name, model in models.items():
        print(f"peers: {name} ({model.name}) on {target}", flush=True)
        fig = peer_figures(model, inputs, target=target, cores=cores)
        fig["mca_modelled"] = {k: round(v, 4) for k, v in fig["mca_modelled"].items()}
        fig["model"] = str(model.relative_to(ROOT)) if model.is_relative_to(ROOT) else str(model)
        out[name] = fig
    return out


def markdown(data: dict) -> str:
    cores = data["cores"]
    lines = [
        f"# mnist_cnn: tvm-intq against ONNX Runtime and LiteRT on emulated {data['cpu']} "
        f"({data['target']})",
        "",
        "One warm inference, 1 thread, counted between markers by the QEMU plugin "
        "(deterministic figures, not wall time).",
        "",
        "| configuration | instructions | int8 dot-product instructions | "
        + " | ".join(f"llvm-mca cycles, {c} (all code)" for c in cores)
        + " | "
        + " | ".join(f"{c}: TVM kernels only" for c in cores)
        + " |",
        "|---|---:|---:|" + "---:|" * (2 * len(cores)),
    ]
    for name in ORDER:
        fig = data["configs"].get(name)
        if fig is None:
            continue
        kernels = [
            f"{fig['mca_kernel_cycles'][c]:,}" if "mca_kernel_cycles" in fig else "" for c in cores
        ]
        dots = ", ".join(f"{n:,} {m}" for m, n in fig.get("dot_instructions", {}).items()) or "-"
        lines.append(
            f"| {name} | {fig['instructions']:,} | {dots} | "
            + " | ".join(f"{fig['mca_cycles'][c]:,}" for c in cores)
            + " | "
            + " | ".join(kernels)
            + " |"
        )
    lines += [
        "",
        "- instructions: ours are the C++ count runner's call of the VM's `main`; the "
        "peers' the Python call a user writes (`session.run`; `set_tensor`/`invoke`/"
        "`get_tensor`), the markers' own cost taken off.",
        "- int8 dot-product instructions: executions per inference (`sdot` does 16 "
        "multiply-accumulates, `smmla` 32); the bundled model's convolutions and dense layer "
        "are 2,282,400 MACs: 142,650 `sdot` if every one went through a full `sdot`.",
        "- llvm-mca cycles: each executed block's steady-state cycles x its executions, "
        "over all the code the inference ran (Python, runtime, libc, kernels); no cache "
        "misses, no branch mispredictions. Share of executed instructions llvm-mca "
        "modelled: "
        + ", ".join(
            f"{n} {min(f['mca_modelled'].values()):.1%}" for n, f in data["configs"].items()
        )
        + ".",
        "",
        f"Command: `{data['command']}`",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="aarch64", choices=("aarch64", "aarch64-i8mm"))
    parser.add_argument("--cores", nargs="+", default=["neoverse-n1"])
    parser.add_argument("--work", default=str(HERE / "work"))
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    m = {k: str(v) for k, v in bench_run.models()["bundled"].items()}
    work = Path(args.work) / m["name"]
    work.mkdir(parents=True, exist_ok=True)
    configs, inputs = ours(m, work, args.target, args.cores)
    configs.update(peer_configs(m, work, args.target, inputs, args.cores))
    from tvm_intq.targets.peers import peer_cpu

    data = {
        "model": m["name"],
        "target": args.target,
        "cpu": peer_cpu(args.target),
        "cores": args.cores,
        "configs": configs,
        "command": " ".join(
            shlex.quote(a) for a in ["python", "bench/peer_figures.py", *(argv or sys.argv[1:])]
        ),
    }
    out = Path(args.out) / m["name"]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"peers.{args.target}.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / f"peers.{args.target}.md").write_text(markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
