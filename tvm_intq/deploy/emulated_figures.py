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

import tempfile
from pathlib import Path

from tvm_intq.deploy.board_bench import plan_bench
from tvm_intq.errors import IntqError
from tvm_intq.targets.boards import emulated_board
from tvm_intq.targets.insn_count import WARMUP_CALLS, run_counted
from tvm_intq.targets.mca import CORE_NOTES, CORES, DOT_MACS, architecture, mca_cycles

#: llvm-mca cores the peers' figures are estimated on by default: the Cortex-A76-class core
#: the aarch64 target describes (the peers' whole-call estimate disassembles every block
#: their libraries ran, which takes a minute per core on the larger models).
PEER_CORES = ("neoverse-n1",)
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


def emulated_cpu(board) -> str:
    """The qemu ``-cpu`` the emulated ``board`` runs (``max`` when it names none)."""
    args = list(board.emulator.qemu_args)
    return args[args.index("-cpu") + 1] if "-cpu" in args else "max"


def mca_label(core: str) -> str:
    note = CORE_NOTES.get(core)
    return f"llvm-mca estimate, {core}" + (f" ({note})" if note else "")


def _is_conv(kernel: str) -> bool:
    return "conv" in kernel or kernel.startswith("depthwise")


def mac_peak(board, mnemonics: dict) -> int:
    """Multiply-accumulates of one int8 instruction of the kind our conv kernels are built on
    (``mnemonics``: what they executed): aarch64 ``smmla`` 32 if they use it, else ``sdot``
    16; RVV: a widening multiply-add on int8 at LMUL 1, VLEN / 8 (16 at VLEN 128)."""
    if architecture(board) == "riscv64":
        args = " ".join(board.emulator.qemu_args)
        vlen = (
            int(args.split("vlen=", 1)[1].split(",", 1)[0].split()[0]) if "vlen=" in args else 128
        )
        return vlen // 8
    return 32 if any(m in mnemonics for m in ("smmla", "ummla", "usmmla")) else 16


def emulated_figures(
    libraries: dict,
    target: str,
    inputs: list,
    *,
    cores=None,
    warmup: int = WARMUP_CALLS,
    macs: dict | None = None,
) -> dict:
    """Figures for ``libraries`` (``{precision: library path}``, built for ``target``) called
    on ``inputs`` (numpy arrays of one batch, in parameter order); ``cores`` defaults to
    :data:`~tvm_intq.targets.mca.CORES` of the target's architecture. ``macs``
    (:func:`~tvm_intq.deploy.peer_bench.multiply_accumulates` of the int8 program) adds the
    int8 conv kernels' MACs per executed instruction against the instruction's peak. On
    aarch64 each program is also estimated over the whole call (``mca_whole_call``: runtime,
    libc and kernels, as the peers are counted)."""
    from tvm_intq.deploy.peer_bench import conv_efficiency
    from tvm_intq.targets.mca import executed_mnemonics, kernel_instructions, whole_call_cycles

    board = emulated_board(target)
    arch = architecture(board)
    cores = tuple(cores or CORES[arch])
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
        kernels = kernel_instructions(library, run, board)
        prog = out["programs"][precision] = {
            "library": str(library),
            "instructions": run.warm_instructions(warmup, f"{Path(library).name} on {board.name}"),
            "instructions_per_call": list(run.per_call),
            "mca_cycles": mca,
            "kernel_instructions": {k: round(v["instructions"]) for k, v in kernels.items()},
        }
        if precision == "int8" and macs:
            mix: dict = {}
            for k, v in kernels.items():
                if _is_conv(k):
                    for m, n in v["mnemonics"].items():
                        mix[m] = mix.get(m, 0.0) + n
            prog["conv_efficiency"] = conv_efficiency(
                {k: v["instructions"] for k, v in kernels.items()}, macs, mac_peak(board, mix)
            )
            prog["macs"] = dict(macs)
        if arch == "aarch64":
            calls = len(run.per_call)
            per_call = {
                f: {key: e / calls for key, e in b.items()} for f, b in run.file_blocks.items()
            }
            cpu = emulated_cpu(board)
            executed = executed_mnemonics(per_call, cpu)
            prog["dot_instructions"] = {m: round(executed[m]) for m in DOT_MACS if m in executed}
            prog["mca_whole_call"] = {}
            # the whole call (VM, runtime, libc) on the peers' core only: llvm-mca over
            # every block a call ran takes minutes per core on the larger models
            for core in [c for c in cores if c in PEER_CORES] or cores[:1]:
                whole = whole_call_cycles(run, board, core)
                prog["mca_whole_call"][core] = {
                    "total": whole["total"],
                    "modelled": round(whole["modelled"], 4),
                    "libraries": {k: round(v) for k, v in whole["libraries"].items()},
                }
                prog["instructions_by_file"] = {
                    k: round(v) for k, v in whole["instructions"].items()
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
    peers: bool = False,
    peer_models: dict | None = None,
    peer_cores=None,
    on_event=None,
) -> dict:
    """``tvm-intq bench --target T`` without ``--key``: build int8 and fp32 for ``target``
    exactly as the bench does (:func:`tvm_intq.deploy.board_bench.plan_bench`; ``databases``
    as there) and return their figures, on the first held-out sample, with the model and
    target. ``peers`` (aarch64 targets): ONNX Runtime and LiteRT int8/fp32 on the same emulated
    core, counted the same way (:mod:`tvm_intq.deploy.peer_bench`; ``peer_models``: ``{NAME:
    file}`` given for a peer), in ``configs`` beside ours and ``peer_notes`` for those left
    out; their llvm-mca cycles on ``peer_cores`` (default: the Cortex-A76-class core of
    :data:`PEER_CORES`)."""
    from tvm_intq.deploy import peer_bench

    work = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="tvm-intq-bench-"))
    if peers and architecture(emulated_board(target)) != "aarch64":
        raise IntqError(
            f"--peers: ONNX Runtime and LiteRT are counted on an emulated ARM core; target "
            f"{target} has no peer (no aarch64 emulated board)"
        )
    plan = plan_bench(
        model,
        calib,
        target,
        fp32=True,
        check_samples=1,
        config=config,
        input_shapes=input_shapes,
        out_dir=work,
        databases=databases,
    )
    inputs = plan.batches[0]
    figures = emulated_figures(
        plan.libraries, target, inputs, cores=cores, warmup=warmup, macs=plan.macs
    )
    out = {
        "model": str(model),
        "target": target,
        "quantization": plan.report,
        "schedules": schedules_note(plan.databases),
        **figures,
    }
    if peers:
        from tvm_intq import api

        cores_peer = tuple(peer_cores or PEER_CORES)
        missing = [c for c in cores_peer if c not in figures["mca_labels"]]
        if missing:
            raise IntqError(f"peer cores {missing} are not among the cores estimated: {cores}")
        calib_part, _ = api.split_holdout(calib)
        models, notes = peer_bench.peer_models(model, calib_part, work, peer_models)
        configs, failed = peer_bench.peer_configs(
            models, inputs, target, cores_peer, on_event=on_event, cache=work / "peers"
        )
        notes.update(failed)
        ours = peer_bench.our_configs(figures)
        for fig in ours.values():
            fig["mca_cycles"] = {c: v for c, v in fig["mca_cycles"].items() if c in cores_peer}
        ordered = {**ours, **configs}
        out["configs"] = {n: ordered[n] for n in peer_bench.CONFIGS if n in ordered}
        out["peer_notes"] = notes
        out["peer_cores"] = list(cores_peer)
        out["cpu"] = emulated_cpu(emulated_board(target))
        out["against_best_peer"] = {c: peer_bench.compare(out["configs"], c) for c in cores_peer}
    return out
