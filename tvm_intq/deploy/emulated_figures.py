"""Deterministic performance figures of compiled programs on an emulated board: what
``tvm-intq bench --target aarch64|riscv64`` reports for int8 vs fp32 where wall time under
qemu means nothing.

    emulated_figures({"int8": "m.int8.so", "fp32": "m.fp32.so"}, "aarch64", [x])

Per program, from one run on the emulated board that runs the target's libraries:

* ``instructions``: guest instructions of one warm inference, counted by QEMU
  (:mod:`tvm_intq.targets.insn_count`; TVM single-threaded);
* ``mca[core]``: llvm-mca's estimate of the cycles one inference spends in TVM kernels on each
  named core (:mod:`tvm_intq.targets.mca`: the executed blocks' steady-state cycles x their
  execution counts; no cache misses), in total, in the convolution kernels, and per kernel;

and the fp32/int8 ratios (how many times fewer int8 needs). Returns plain data; the report
module formats it.
"""

from __future__ import annotations

from pathlib import Path

from tvm_intq.deploy.board_bench import plan_bench
from tvm_intq.targets.boards import emulated_board
from tvm_intq.targets.insn_count import WARMUP_CALLS, run_counted
from tvm_intq.targets.mca import CORE_NOTES, CORES, architecture, mca_cycles

INSTRUCTIONS_LABEL = "qemu instructions executed per inference (warm call, 1 thread)"
MCA_METHOD = (
    "llvm-mca estimate: per executed straight-line block, llvm-mca's steady-state "
    "cycles per iteration on the core's scheduling model x the times the emulated "
    "board executed the block, summed over TVM kernels; no cache or TLB misses, no "
    "branch mispredictions"
)


def schedules_note(databases: list) -> str:
    """How bench_emulated's programs were built, said with its figures because it decides the
    fp32 side: TVM's default fp32 schedules are scalar on these targets."""
    if not databases:
        return (
            "no tuning database: fp32 with TVM's default schedules, int8 with tvm-intq's "
            "default int8 kernels"
        )
    cost = [
        (Path(f) / "cost.txt").read_text().strip()
        if (Path(f) / "cost.txt").is_file()
        else "wall time"
        for f in databases
    ]
    return (
        "kernels with a record in the tuning databases "
        + ", ".join(f"{f} ({c})" for f, c in zip(databases, cost))
        + " are tuned, the rest get the default "
        "schedules (TVM's for fp32, tvm-intq's int8 kernels)"
    )


def mca_label(core: str) -> str:
    note = CORE_NOTES.get(core)
    return f"llvm-mca estimate, {core}" + (f" ({note})" if note else "")


def _is_conv(kernel: str) -> bool:
    return "conv" in kernel


def emulated_figures(
    libraries: dict, target: str, inputs: list, *, cores=None, warmup: int = WARMUP_CALLS
) -> dict:
    """Figures for ``libraries`` (``{precision: library path}``, built for ``target``) called
    on ``inputs`` (numpy arrays of one batch, in parameter order); ``cores`` defaults to
    :data:`~tvm_intq.targets.mca.CORES` of the target's architecture."""
    board = emulated_board(target)
    cores = tuple(cores or CORES[architecture(board)])
    out = {
        "board": board.name,
        "emulator": f"{board.emulator.qemu} {' '.join(board.emulator.qemu_args)}",
        "instructions_label": INSTRUCTIONS_LABEL,
        "mca_method": MCA_METHOD,
        "mca_labels": {core: mca_label(core) for core in cores},
        "programs": {},
    }
    for precision, library in libraries.items():
        run = run_counted(library, board, inputs, calls=warmup + 2, blocks=True)
        mca = {}
        for core in cores:
            kernels = mca_cycles(library, board, inputs, core, execution=run)
            mca[core] = {
                "total": sum(kernels.values()),
                "convs": sum(c for k, c in kernels.items() if _is_conv(k)),
                "kernels": dict(sorted(kernels.items(), key=lambda kv: -kv[1])),
            }
        out["programs"][precision] = {
            "library": str(library),
            "instructions": run.warm_instructions(warmup, f"{Path(library).name} on {board.name}"),
            "instructions_per_call": list(run.per_call),
            "mca_cycles": mca,
        }
    progs = out["programs"]
    if "int8" in progs and "fp32" in progs:
        i8, f32 = progs["int8"], progs["fp32"]
        out["fp32_over_int8"] = {
            "instructions": f32["instructions"] / i8["instructions"],
            "mca_cycles": {
                core: {
                    part: (
                        f32["mca_cycles"][core][part] / i8["mca_cycles"][core][part]
                        if i8["mca_cycles"][core][part]
                        else None
                    )
                    for part in ("total", "convs")
                }
                for core in cores
            },
        }
    return out


def bench_emulated(
    model,
    calib,
    target: str,
    *,
    config=None,
    input_shapes=None,
    out_dir=None,
    cores=None,
    warmup: int = WARMUP_CALLS,
    databases: list | None = None,
) -> dict:
    """``tvm-intq bench --target T`` without ``--key``: build int8 and fp32 for ``target``
    exactly as the bench does (:func:`tvm_intq.deploy.board_bench.plan_bench`; ``databases``
    as there) and return their figures, on the first held-out sample, with the model and target."""
    plan = plan_bench(
        model,
        calib,
        target,
        fp32=True,
        check_samples=1,
        config=config,
        input_shapes=input_shapes,
        out_dir=out_dir,
        databases=databases,
    )
    return {
        "model": str(model),
        "target": target,
        "quantization": plan.report,
        "schedules": schedules_note(plan.databases),
        **emulated_figures(plan.libraries, target, plan.batches[0], cores=cores, warmup=warmup),
    }
