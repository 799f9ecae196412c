"""``make bench``: ONNX Runtime fp32 / int8 vs TVM fp32 tuned vs tvm-intq int8 tuned.

    python bench/run.py [--models bundled] [--trials 4] [--threads 1 2] [--rounds 1]
                        [--out bench/results]

Per model, batch 1, for each thread count:

* ONNX Runtime fp32: the ONNX model as is;
* ONNX Runtime int8: ``quantize_static`` (after ``quant_pre_process``), QDQ, per-channel int8
  weights, int8 activations, calibrated on the same samples tvm-intq calibrates on;
* TVM fp32: ``tvm-intq tune --fp32`` then ``tvm-intq compile --fp32 --db`` (same trial budget);
* tvm-intq int8: ``tvm-intq tune`` then ``tvm-intq compile --db`` (the shipped database, if
  any, is the starting point: tuning resumes from it up to the budget).

Both tune with ``--threads 1``: candidates are measured as the headline figure runs them.

Tuning databases are kept in ``bench/work/<model>/`` and resumed on the next run. Each
configuration is timed in its own process (bench/measure.py). Results go to
``bench/results/<model>/``: results.json (medians, ratios, memory, machine, command),
results.md, results.png.

Then, for each of ``--emulated`` (default aarch64 riscv64): int8 vs fp32 built for that target
and the deterministic figures ``tvm-intq bench --target T`` gives (qemu instructions per
inference, llvm-mca cycle estimates per core; :mod:`tvm_intq.deploy.emulated_figures`), in
emulated.json, emulated.md, emulated.png. ``--parts emulated`` makes only these. On aarch64
targets the same table has ONNX Runtime and LiteRT int8/fp32 on the same emulated core, counted
the same way (``tvm-intq bench --peers``; ``--no-peers`` leaves them out): ONNX models get ONNX
Runtime (fp32, and ``quantize_static`` int8 on the same calibration samples), ``.tflite``
models LiteRT (the float file and its ai-edge-quantizer int8 version in bench/models/); the
bundled model also has LiteRT versions there (tools/make_peer_tflite.py).

The emulated-only models (``--models ... --parts emulated``): ``light_resnet50_32``,
``det``/``rec``/``cls`` (PP-OCRv4, eval/), ``palm_detection_lite`` and
``face_detection_short_range`` (MediaPipe, tools/make_mediapipe_tflite.py), at input sizes that
keep each model's counting run within minutes (each model's ``note``, printed with its table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
MODELS = HERE / "models"  # LiteRT versions of the models (tools/make_*_tflite.py)
sys.path.insert(0, str(HERE))  # bench/images.py
CLI = [sys.executable, "-m", "tvm_intq.cli"]


def models() -> dict:
    from tvm_intq.demo import bundled

    return {
        "bundled": dict(
            name="mnist_cnn",
            onnx=bundled("mnist_cnn.onnx"),
            calib=bundled("calib.npz"),
            eval=bundled("heldout.npz"),
            # tools/make_peer_tflite.py: the same network and weights as LiteRT models
            peer_models={
                "litert-fp32": MODELS / "mnist_cnn.tflite",
                "litert-int8": MODELS / "mnist_cnn.int8.tflite",
            },
        ),
        # onnx's "light" ResNet-50: the real architecture, every weight 0.02 (timing only; no
        # labels). Calibration/timing inputs: uniform [0, 1) images, made once in bench/work.
        "light_resnet50": dict(
            name="light_resnet50",
            onnx=_light("resnet50"),
            calib=lambda work: _random_images(work, "calib.npz", 16),
            eval=lambda work: _random_images(work, "eval.npz", 2),
        ),
        # The same at 32x32: what the emulated part counts (ResNet-50 at 224x224 is 4.1 G
        # multiply-accumulates: counting TVM's default fp32 schedules and the peers over it
        # takes hours under qemu; 32x32 keeps every layer, 1/49 of the work, 84 M).
        "light_resnet50_32": dict(
            name="light_resnet50_32",
            onnx=lambda work: _resized_input(_light("resnet50"), work, (1, 3, 32, 32)),
            calib=lambda work: _random_images(work, "calib.npz", 16, (3, 32, 32)),
            note="onnx's light ResNet-50 (every weight 0.02), input 1x3x32x32 (224x224 in the "
            "model: 49x the work), uniform random images: the emulated counting stays within "
            "minutes",
        ),
        # PP-OCRv4 (eval/): detection at 96x96 (eval: 320x320), recognition of a 48x64 line
        # start (eval: 48x320), direction classification at its own 48x192.
        **{
            key: dict(
                name=f"ppocr_{key}",
                onnx=lambda work, key=key, shape=shape: _ocr_model(key, shape),
                calib=lambda work, key=key, shape=shape: _ocr_samples(key, shape, work),
                note=note,
            )
            for key, shape, note in (
                (
                    "det",
                    (1, 3, 96, 96),
                    "PP-OCRv4 det, input 1x3x96x96 (rapidocr: 736 on the short side; eval/: "
                    "320x320), rendered pages resized: 50 M multiply-accumulates",
                ),
                (
                    "rec",
                    (1, 3, 48, 64),
                    "PP-OCRv4 rec, input 1x3x48x64 (rapidocr: 48x320), the first 64 columns "
                    "of rendered text lines",
                ),
                (
                    "cls",
                    (1, 3, 48, 192),
                    "PP-OCR mobile v2 direction classifier, its own input 1x3x48x192",
                ),
            )
        },  # fmt: skip
        # MediaPipe detectors (tools/make_mediapipe_tflite.py): float .tflite compiled by
        # tvm-intq with its own calibration on scikit-image photographs (bench/images.py),
        # LiteRT on the same float file and on ai-edge-quantizer's int8 version of it.
        **{
            key: dict(
                name=key,
                onnx=MODELS / f"{key}.tflite",
                calib=lambda work, size=size, lo=lo: _photos(work, size, lo),
                peer_models={
                    "litert-fp32": MODELS / f"{key}.tflite",
                    "litert-int8": MODELS / f"{key}.int8.tflite",
                },
                note=note,
            )
            for key, size, lo, note in (
                (
                    "palm_detection_lite",
                    (192, 192),
                    0.0,
                    "MediaPipe palm detection (lite), its own input 1x192x192x3, RGB in [0, 1]",
                ),
                (
                    "face_detection_short_range",
                    (128, 128),
                    -1.0,
                    "MediaPipe face detection "
                    "(short range), its own input 1x128x128x3, RGB in [-1, 1]",
                ),
            )
        },  # fmt: skip
    }


def _light(name: str) -> Path:
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"


def _random_images(work: Path, file: str, n: int, shape=(3, 224, 224)) -> Path:
    path = work / file
    if not path.exists():
        x = np.random.default_rng(0).random((n,) + shape, dtype=np.float32)
        np.savez(path, **{"gpu_0/data_0": x})
    return path


def _resized_input(model: Path, work: Path, shape: tuple) -> Path:
    """``model`` with its (only) image input fixed to ``shape`` and every other shape left to
    inference: ONNX Runtime checks inputs against the declared shape."""
    import onnx

    out = work / f"{model.stem}_{'x'.join(map(str, shape))}.onnx"
    if not out.exists():
        m = onnx.load(str(model))
        inits = {i.name for i in m.graph.initializer}
        (inp,) = [i for i in m.graph.input if i.name not in inits]
        for dim, value in zip(inp.type.tensor_type.shape.dim, shape):
            dim.Clear()
            dim.dim_value = value
        del m.graph.value_info[:]
        for o in m.graph.output:
            o.type.tensor_type.ClearField("shape")
        onnx.save(m, str(out))
    return out


def _ocr_model(key: str, shape: tuple) -> Path:
    sys.path.insert(0, str(ROOT))
    from eval import ocr_models

    return ocr_models.prepare(key, shape=shape)


def _ocr_samples(key: str, shape: tuple, work: Path, n: int = 16) -> Path:
    """eval/'s rendered calibration inputs for ``key`` at ``shape``: pages resized (det), the
    first columns of each line (rec), as they are (cls)."""
    path = work / f"calib_{'x'.join(map(str, shape))}.npz"
    if not path.exists():
        sys.path.insert(0, str(ROOT))
        from skimage.transform import resize

        from eval.tasks import load_task

        x = load_task(key, (n, 1)).calib["x"][:n]
        if key == "det":
            x = resize(x, (x.shape[0], x.shape[1], *shape[2:]), anti_aliasing=True)
        else:
            x = x[..., : shape[3]]
        np.savez(path, x=np.ascontiguousarray(x, dtype=np.float32))
    return path


def _photos(work: Path, size: tuple, lo: float, n: int = 16) -> Path:
    """scikit-image photographs at the model's input size, NHWC, in [lo, 1] (bench/images.py:
    the images tools/make_mediapipe_tflite.py calibrates LiteRT int8 on)."""
    from images import images

    path = work / f"calib_{size[0]}x{size[1]}.npz"
    if not path.exists():
        np.savez(path, input=images(size, n, (lo, 1.0)))
    return path


def run(cmd, env=None, log=None) -> str:
    print("$ " + " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    proc = subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(map(str, cmd))}\n{proc.stdout}\n{proc.stderr}\n")
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}")
    return proc.stdout


def calibration_part(calib: Path, work: Path) -> Path:
    """The samples `tvm-intq compile --calib` calibrates on (all but its held-out 10%)."""
    from tvm_intq.api import split_holdout
    from tvm_intq.calibration import SampleSet

    arrays = dict(np.load(calib))
    head, _ = split_holdout(SampleSet(arrays))
    out = work / "calib_used.npz"
    np.savez(out, **head.arrays)
    return out


def ort_int8(model: Path, calib: Path, work: Path) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / "ort_int8.onnx"
    if out.exists():
        return out
    pre = work / "ort_pre.onnx"
    quant_pre_process(str(_ort_ready(model, work)), str(pre))
    data = np.load(calib)
    name, x = data.files[0], data[data.files[0]]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = iter(x[i : i + 1] for i in range(len(x)))

        def get_next(self):
            s = next(self.samples, None)
            return None if s is None else {name: s}

    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    return out


def _ort_ready(model: Path, work: Path) -> Path:
    """``model`` as quantize_static can take it: per-channel QDQ needs opset >= 13 (the axis of
    DequantizeLinear), and no graph input may be an initializer (IR version 3 lists every
    weight as an input, as onnx's light models do: ORT's optimizer folds those weights away
    but keeps the inputs, and calibration then demands a feed for each)."""
    import onnx
    from onnx import version_converter

    m = onnx.load(str(model))
    inits = {i.name for i in m.graph.initializer}
    opset = max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    if opset >= 13 and not any(i.name in inits for i in m.graph.input):
        return model
    keep = [i for i in m.graph.input if i.name not in inits]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    m.ir_version = max(m.ir_version, 4)  # the first to allow initializers off the inputs
    out = work / "ort_ready.onnx"
    onnx.save(version_converter.convert_version(m, max(opset, 13)), str(out))
    return out


def tvm_library(m: dict, work: Path, trials: int, fp32: bool, log: Path) -> Path:
    from tvm_intq.schedules.database import shipped_databases

    kind = "fp32" if fp32 else "int8"
    db, lib = work / f"{kind}_db", work / f"{kind}.so"
    shipped = [
        p for p in shipped_databases("host") if p.name == (m["name"] + ("_fp32" if fp32 else ""))
    ]
    if not db.exists() and shipped:
        shutil.copytree(shipped[0], db, ignore=shutil.ignore_patterns("logs"))
    data = ["--fp32"] if fp32 else ["--calib", m["calib"]]
    run(
        CLI
        + [
            "tune",
            m["onnx"],
            *data,
            "--target",
            "host",
            "--trials",
            trials,
            "--db",
            db,
            "--threads",
            1,
            "--no-progress",
        ],
        log=log,
    )
    out = run(
        CLI
        + ["compile", m["onnx"], *data, "--target", "host", "--db", db, "-o", lib, "--no-progress"],
        log=log,
    )
    coverage = [line for line in out.splitlines() if line.startswith(("tuned kernels", "no tuned"))]
    return lib, coverage


def memory(m: dict) -> dict:
    from tvm_intq import api
    from tvm_intq.calibration import load_npz
    from tvm_intq.frontends import import_model
    from tvm_intq.schedules.memory import constant_bytes, peak_activation_bytes
    from tvm_intq.targets import get_target

    spec = get_target("host")
    mod, info = import_model(m["onnx"])
    calib = load_npz(m["calib"], info.inputs)
    compiled = api.compile_onnx(m["onnx"], calib, api.QuantConfig(progress=False), spec)
    out = {}
    for kind, module in (("fp32", compiled.prepared), ("int8", compiled.integer)):
        out[kind] = {
            "weight_bytes": constant_bytes(module),
            "peak_activation_bytes": peak_activation_bytes(module, spec.target(), spec.int8_dot),
        }
    return out


def emulated_model(key: str, args) -> dict:
    """Deterministic figures on the emulated boards, as `tvm-intq bench --target T` gives them;
    on aarch64 targets with ONNX Runtime and LiteRT on the same core (``--peers``)."""
    from tvm_intq import api
    from tvm_intq.deploy.emulated_figures import bench_emulated
    from tvm_intq.frontends import import_model
    from tvm_intq.targets.boards import emulated_board
    from tvm_intq.targets.mca import CORES, architecture

    m, work = _model(key, args)
    _, info = import_model(m["onnx"])
    calib = api.load_samples(m["calib"], info, "calibration data")
    peer_models = {k: Path(v) for k, v in m.get("peer_models", {}).items()}
    targets = {}
    for target in args.emulated:
        print(f"emulated figures: {m['name']} on {target}", flush=True)
        peers = args.peers and architecture(emulated_board(target)) == "aarch64"
        arch = architecture(emulated_board(target))
        cores = [c for c in args.mca_cores if c in CORES[arch]] if args.mca_cores else None
        fig = bench_emulated(
            m["onnx"],
            calib,
            target,
            cores=cores or None,
            out_dir=work / target,
            peers=peers,
            peer_models=peer_models,
            on_event=lambda msg: print(f"  {msg}", flush=True),
        )
        flags = "".join(f" --peer-model {n}={_relative(str(p))}" for n, p in peer_models.items())
        fig["command"] = f"tvm-intq bench {m['onnx']} --calib {m['calib']} --target {target}" + (
            f" --peers{flags}" if peers else ""
        )
        if m.get("note"):
            fig["note"] = m["note"]
        targets[target] = fig
    return _relative(
        {"model": m["name"], "onnx": m["onnx"], "targets": targets, "command": _command()}
    )


def _model(key: str, args) -> tuple[dict, Path]:
    """The model's files (made in its work folder when generated) and that folder."""
    m = dict(models()[key])
    work = Path(args.work) / m["name"]
    work.mkdir(parents=True, exist_ok=True)
    return {
        k: v if isinstance(v, dict) else str(v(work) if callable(v) else v) for k, v in m.items()
    }, work


def _command() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def machine() -> dict:
    import onnxruntime
    import tvm

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    flags = next(
        (
            line.split(":", 1)[1].split()
            for line in open("/proc/cpuinfo")
            if line.startswith("flags")
        ),
        [],
    )
    return {
        "cpu": cpu,
        "llvm_cpu": tvm.target.codegen.llvm_get_system_cpu(),
        "cores_available": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "avx512_vnni": "avx512_vnni" in flags,
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "tvm": tvm.__version__,
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def measure(kind: str, path: Path, threads: int, inputs: Path, seconds: float) -> dict:
    env = {"TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    out = run(
        [
            sys.executable,
            HERE / "measure.py",
            kind,
            path,
            "--threads",
            threads,
            "--input",
            inputs,
            "--seconds",
            seconds,
        ],
        env=env,
    )
    return json.loads(out.strip().splitlines()[-1])


def bench_model(key: str, args) -> dict:
    m, work = _model(key, args)
    log = work / "commands.log"
    calib_used = calibration_part(Path(m["calib"]), work)
    configs = {
        "onnxruntime fp32": ("ort", Path(m["onnx"]), []),
        "onnxruntime int8": ("ort", ort_int8(Path(m["onnx"]), calib_used, work), []),
    }
    lib, cov = tvm_library(m, work, args.trials, fp32=True, log=log)
    configs["tvm fp32 tuned"] = ("tvm", lib, cov)
    lib, cov = tvm_library(m, work, args.trials, fp32=False, log=log)
    configs["tvm-intq int8 tuned"] = ("tvm", lib, cov)
    facts_before = machine()
    # Rounds interleave the configurations, so a drift of the shared machine's speed (+-10 %
    # from run to run here) hits all of them alike; each round's ratios are kept.
    rounds = {name: {str(t): [] for t in args.threads} for name in configs}
    for _ in range(args.rounds):
        for threads in args.threads:
            for name, (kind, path, _) in configs.items():
                rounds[name][str(threads)].append(
                    measure(kind, path, threads, Path(m["eval"]), args.seconds)
                )
    results = {
        name: {
            t: {
                **runs[0],
                "median_ms": statistics.median(r["median_ms"] for r in runs),
                "rounds_ms": [r["median_ms"] for r in runs],
            }
            for t, runs in res.items()
        }
        for name, res in rounds.items()
    }
    ours = results["tvm-intq int8 tuned"]
    ratios = {
        name: {t: r["median_ms"] / ours[t]["median_ms"] for t, r in res.items()}
        for name, res in results.items()
        if name != "tvm-intq int8 tuned"
    }
    won = {
        name: {
            t: sum(o < other for o, other in zip(ours[t]["rounds_ms"], r["rounds_ms"]))
            for t, r in res.items()
        }
        for name, res in results.items()
        if name != "tvm-intq int8 tuned"
    }
    return _relative(
        {
            "model": m["name"],
            "onnx": m["onnx"],
            "batch": 1,
            "threads": args.threads,
            "trials_per_kernel": args.trials,
            "rounds": args.rounds,
            "latency": results,
            "speedup_of_tvm_intq_int8": ratios,  # other median / tvm-intq int8 median
            "rounds_tvm_intq_int8_faster": won,
            "tuning_coverage": {name: cov for name, (_, _, cov) in configs.items() if cov},
            "memory": memory(m),
            "machine": facts_before,
            "load_average_after": os.getloadavg(),
            "command": _command(),
            "timing": "median of per-call wall times (Python loop, one batch-1 input, after 50 "
            f"warm-up calls, >= {args.seconds:.0f} s per configuration), the median over "
            f"{args.rounds} interleaved rounds; top-1 on the held-out set",
        }
    )


def _relative(data):
    """Paths under the repository written relative to it (results are committed)."""
    if isinstance(data, dict):
        return {k: _relative(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_relative(v) for v in data]
    return data.replace(f"{ROOT}/", "") if isinstance(data, str) else data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["bundled"], choices=sorted(models()))
    p.add_argument("--trials", type=int, default=4, help="tuning trials per kernel (fp32 and int8)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seconds", type=float, default=5.0, help="timing per configuration")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="time every configuration this many times, interleaved (median)",
    )
    p.add_argument(
        "--emulated",
        nargs="*",
        default=["aarch64", "riscv64"],
        help="targets whose emulated board gives deterministic figures (none: skip)",
    )
    p.add_argument("--parts", nargs="+", default=["host", "emulated"], choices=["host", "emulated"])
    p.add_argument(
        "--mca-cores",
        nargs="+",
        help="emulated part: llvm-mca cores to estimate (each target takes those of its "
        "architecture; default: all of tvm_intq.targets.mca.CORES)",
    )
    p.add_argument(
        "--no-peers",
        dest="peers",
        action="store_false",
        help="emulated part: leave out ONNX Runtime and LiteRT on the aarch64 core",
    )
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--work", default=str(HERE / "work"))
    args = p.parse_args(argv)
    from tvm_intq.reports.speed import bench_markdown, write_bench, write_emulated

    for key in args.models:
        if "host" in args.parts:
            data = bench_model(key, args)
            written = write_bench(data, Path(args.out) / data["model"])
            print("\n".join(bench_markdown(data).splitlines()[:20]))
            print("wrote " + ", ".join(map(str, written)))
        if "emulated" in args.parts and args.emulated:
            data = emulated_model(key, args)
            # targets measured by an earlier run and not by this one stay in the table
            previous = Path(args.out) / data["model"] / "emulated.json"
            if previous.is_file():
                kept = json.loads(previous.read_text()).get("targets", {})
                data["targets"] = {
                    **{t: f for t, f in kept.items() if t not in data["targets"]},
                    **data["targets"],
                }
            written = write_emulated(data, Path(args.out) / data["model"])
            print("wrote " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
