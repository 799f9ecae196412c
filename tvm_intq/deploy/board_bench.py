"""The bench job: compile a model for a board, run it there through the tracker, check its
outputs against the host, and time it.

    bench(model, calib, target="aarch64", tracker="127.0.0.1:9190", key="aarch64-emu")

1. :func:`prepare`: quantize on the host exactly as ``tvm-intq compile`` does and build the
   integer program - and with ``fp32=True`` the float one too - for ``target``; host
   references for a few held-out samples: the integer program through
   :func:`tvm_intq.evaluation.reference.run_reference` (numpy, integer semantics), the float
   model through ONNX Runtime.
2. :func:`run` (reusable for a prepared plan):
   one job per program, spread over the boards under ``key`` (:func:`run_on_boards`: a board
   that dies mid-job costs a retry on another, not the results already measured): upload under
   a unique name, load, run the check samples and fetch the outputs back, then warm-up + ``repeat``
   timed calls with TVM's time_evaluator on the board.
3. The int8 outputs must equal the reference bit for bit (integers match across x86, ARM and
   RISC-V); the float outputs are compared with a tolerance and their largest error reported.

Returns plain data (:func:`tvm_intq.reports.speed.bench_table` formats it). Latency from an emulated
board is the emulator's wall time: the result says so and carries the int8/fp32 ratio, which is
no hardware claim either.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tvm_intq import api
from tvm_intq.calibration import SampleSet
from tvm_intq.compiler.runner import Runner, check_inputs
from tvm_intq.deploy.peer_bench import multiply_accumulates
from tvm_intq.errors import IntqError
from tvm_intq.evaluation.reference import run_reference
from tvm_intq.files import atomic_path
from tvm_intq.frontends import import_model
from tvm_intq.schedules import database as D
from tvm_intq.targets import get_target
from tvm_intq.targets.boards import board_for_key
from tvm_intq.targets.rpc import (
    Board,
    Job,
    RunStopped,
    TrackerClient,
    check_target_for_key,
    run_on_boards,
)

EMULATED_NOTE = (
    "emulated: wall time of qemu-user on this machine, not of any hardware; "
    "the int8/fp32 ratio under emulation is no hardware claim either"
)

# fp32 on the board vs ONNX Runtime on the host: different ISAs and summation orders.
FP32_RTOL, FP32_ATOL_OF_RANGE = 1e-3, 1e-4


def _as_list(out) -> list[np.ndarray]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _percentiles(seconds: np.ndarray) -> dict:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "mean_ms": float(ms.mean()),
        "samples_ms": [float(v) for v in ms],
    }


def _job(
    name: str,
    library: Path,
    batches: list[list[np.ndarray]],
    expected: list[list[np.ndarray]],
    exact: bool,
    repeat: int,
    number: int,
    warmup: int,
) -> Job:
    def fn(board: Board) -> dict:
        remote = board.upload(library)
        vm = board.load_vm(remote)
        worst, match = 0.0, True
        for inputs, want in zip(batches, expected):
            got = board.run(vm, inputs)
            if len(got) != len(want):
                raise IntqError(
                    f"{name}: the board returned {len(got)} outputs, the host {len(want)}"
                )
            for g, w in zip(got, want):
                if exact:
                    match &= g.dtype == w.dtype and g.shape == w.shape and np.array_equal(g, w)
                    if g.shape == w.shape:
                        worst = max(
                            worst,
                            float(np.max(np.abs(g.astype(np.float64) - w))) if g.size else 0.0,
                        )
                else:
                    diff = np.abs(g.astype(np.float64) - w.astype(np.float64))
                    worst = max(worst, float(diff.max()) if diff.size else 0.0)
                    atol = FP32_ATOL_OF_RANGE * float(np.max(np.abs(w))) if w.size else 0.0
                    match &= g.shape == w.shape and bool(
                        np.allclose(g, w, rtol=FP32_RTOL, atol=atol)
                    )
        seconds = board.time(vm, batches[0], repeat=repeat, number=number, warmup=warmup)
        return {
            "library": str(library),
            "remote_name": remote,
            "emulated": board.emulated,
            "outputs_checked": len(batches),
            "outputs_match": bool(match),
            "check": "bit-exact vs numpy reference"
            if exact
            else f"within {FP32_RTOL:g} rel. of ONNX Runtime",
            "max_abs_diff": worst,
            "repeat": repeat,
            "number": number,
            "warmup": warmup,
            **_percentiles(seconds),
        }

    return Job(name, fn)


@dataclass
class BenchPlan:
    """What :func:`prepare` built on the host: the libraries and the outputs they must give."""

    model: str
    target: str
    libraries: dict  # precision -> library path
    batches: list  # check inputs: one list of arrays (model input order) per batch
    expected: dict  # precision -> [[array per output] per batch]
    report: dict  # the quantization report on the check samples
    databases: list  # tuning database folders the libraries were built with
    #: multiply-accumulates of one call of the int8 program: {"conv": n, "dense": n}
    macs: dict | None = None


def plan_bench(
    model,
    calib: SampleSet,
    target: str,
    *,
    fp32: bool = False,
    check_samples: int = 4,
    config: api.QuantConfig | None = None,
    input_shapes: dict | None = None,
    out_dir=None,
    databases: list | None = None,
) -> BenchPlan:
    """Quantize and build for ``target`` exactly as ``tvm-intq compile`` does (calibration on
    the first 90 % of ``calib``; tuned kernels from ``databases``, folders, default the ones
    shipped for the target), and compute the host's expected outputs for the first
    ``check_samples`` held-out samples: the numpy reference for int8, ONNX Runtime for fp32."""
    if check_samples < 1:
        raise IntqError("--check-samples must be >= 1")
    spec = get_target(target)
    spec.check_toolchain()
    config = config or api.QuantConfig(progress=False)
    _, info = import_model(model, input_shapes)
    check_inputs(calib, info.inputs, "calibration data")
    calib_part, held = api.split_holdout(calib)
    n = min(check_samples, held.num_samples)
    check = SampleSet({k: v[:n] for k, v in held.arrays.items()})
    compiled = api.compile_onnx(model, calib_part, config, spec, input_shapes, eval_samples=check)

    names = list(info.inputs)
    feeds = [f for f, _valid in check.batches(info.batch_size)]
    batches = [[np.ascontiguousarray(f[k]) for k in names] for f in feeds]
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="tvm-intq-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(model).stem
    libraries = {"int8": out / f"{stem}.int8.{spec.name}.so"}
    folders = D.shipped_databases(spec.name) if databases is None else list(databases)
    db = D.union(folders)
    with atomic_path(libraries["int8"]) as tmp:  # whole, or not at all (a Ctrl-C in the link)
        spec.export(api.build(compiled.integer, spec, database=db), tmp)
    expected = {
        "int8": [
            [np.asarray(o) for o in _as_list(run_reference(compiled.integer, f))] for f in feeds
        ]
    }
    if fp32:
        libraries["fp32"] = out / f"{stem}.fp32.{spec.name}.so"
        with atomic_path(libraries["fp32"]) as tmp:
            spec.export(api.build(compiled.prepared, spec, database=db), tmp)
        if Path(model).suffix == ".tflite":
            # no ONNX Runtime for a .tflite: the float program TVM builds for the host
            host = Runner(api.build(compiled.prepared, "host"), names)
            expected["fp32"] = [[np.asarray(o) for o in host(f)] for f in feeds]
        else:
            import onnxruntime as ort

            sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
            expected["fp32"] = [[np.asarray(o) for o in sess.run(None, f)] for f in feeds]
    report = {
        k: compiled.report.get(k)
        for k in ("output_sqnr_db", "integer_only", "scheme", "calibrator")
    }
    return BenchPlan(
        str(model),
        spec.name,
        libraries,
        batches,
        expected,
        report,
        [str(f) for f in folders],
        multiply_accumulates(compiled.integer),
    )


def run(
    plan: BenchPlan,
    tracker: str,
    key: str,
    *,
    repeat: int = 10,
    number: int = 1,
    warmup: int = 1,
    timeout: float = 120.0,
    session_timeout: float = 600.0,
    on_event=None,
) -> dict:
    """Run a prepared bench on the boards under ``key`` (see the module docstring)."""
    if repeat < 1 or number < 1 or warmup < 0:
        raise IntqError("--repeat and --number must be >= 1, --warmup >= 0")
    check_target_for_key(get_target(plan.target), key)
    client = TrackerClient(tracker)
    n_boards = client.require_boards(key)
    board = board_for_key(key)
    jobs = [
        _job(p, lib, plan.batches, plan.expected[p], p == "int8", repeat, number, warmup)
        for p, lib in plan.libraries.items()
    ]
    result = {
        "model": plan.model,
        "target": plan.target,
        "key": key,
        "tracker": client.url,
        "boards_under_key": n_boards,
        "board_kind": board.name if board else None,
        "emulated": bool(board and board.emulated),
        "note": EMULATED_NOTE
        if board and board.emulated
        else "measured on the board by TVM's time_evaluator",
        "check_samples": sum(len(b[0]) for b in plan.batches),
        "quantization": plan.report,
    }
    try:
        outcome = run_on_boards(
            client, key, jobs, timeout=timeout, session_timeout=session_timeout, on_event=on_event
        )
    except RunStopped as err:
        result.update(_summarize(err.outcome))
        result["error"] = str(err)
        raise BenchStopped(str(err), result) from None
    result.update(_summarize(outcome))
    i8 = result["results"]["int8"]
    if not i8["outputs_match"]:
        result["error"] = (
            f"int8 outputs from board {i8['board']} differ from the numpy "
            f"reference (max abs diff {i8['max_abs_diff']:g})"
        )
    return result


def bench(
    model,
    calib: SampleSet,
    target: str,
    tracker: str,
    key: str,
    *,
    fp32: bool = False,
    repeat: int = 10,
    number: int = 1,
    warmup: int = 1,
    check_samples: int = 4,
    config: api.QuantConfig | None = None,
    input_shapes: dict | None = None,
    timeout: float = 120.0,
    session_timeout: float = 600.0,
    out_dir=None,
    databases: list | None = None,
    on_event=None,
) -> dict:
    """:func:`prepare` then :func:`run`; returns the result as plain data.

    Raises :class:`IntqError` with one line for a missing tracker, no board under ``key``, a
    target whose libraries the key's boards cannot load (all three before compiling), a busy
    board (after ``timeout`` s) or boards that all died; in the last two cases the exception
    (:class:`BenchStopped`) carries in ``result`` whatever was measured before."""
    if repeat < 1 or number < 1 or warmup < 0:
        raise IntqError("--repeat and --number must be >= 1, --warmup >= 0")
    check_target_for_key(get_target(target), key)
    TrackerClient(tracker).require_boards(key)  # no tracker / no board: one line, before compiling
    plan = plan_bench(
        model,
        calib,
        target,
        fp32=fp32,
        check_samples=check_samples,
        config=config,
        input_shapes=input_shapes,
        out_dir=out_dir,
        databases=databases,
    )
    return run(
        plan,
        tracker,
        key,
        repeat=repeat,
        number=number,
        warmup=warmup,
        timeout=timeout,
        session_timeout=session_timeout,
        on_event=on_event,
    )


class BenchStopped(IntqError):
    """The bench could not finish; ``result`` holds what was measured."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def _summarize(outcome) -> dict:
    res = {"results": outcome.results, "boards_used": outcome.boards, "boards_lost": outcome.lost}
    i8, f32 = outcome.results.get("int8"), outcome.results.get("fp32")
    if i8 and f32:
        res["ratio_int8_over_fp32"] = i8["p50_ms"] / f32["p50_ms"] if f32["p50_ms"] else None
    return res
