"""``make bench``: ONNX Runtime fp32 / int8 vs TVM fp32 vs tvm-intq int8, on real models.

    python bench/run.py [--models KEY ...] [--minutes 10] [--threads 1 2] [--rounds 3]
                        [--parts host emulated] [--out bench/results] [--work bench/work]

The models (bench/catalogue.py): the bundled model, bench/unseen_cnn.py's never-seen CNN, the
PP-OCRv4 det (320x320 and 640x640), rec and cls models of ``make eval``, and every model of
onnx's light zoo. Per model, batch 1, at each of ``--threads``:

* ONNX Runtime fp32: the ONNX model as is;
* ONNX Runtime int8: ``quantize_static`` (after ``quant_pre_process``), QDQ, per-channel int8
  weights, int8 activations, calibrated on the samples tvm-intq calibrates on;
* TVM fp32: ``tvm-intq compile --fp32 --no-db`` (TVM's default build, untuned: as a TVM user
  gets it);
* tvm-intq int8, no database: ``tvm-intq compile --calib ... --no-db`` (what a user of a
  model nobody tuned gets);
* tvm-intq int8 after ``--minutes`` of ``tvm-intq tune --minutes N --threads 1`` into an
  empty database, then ``tvm-intq compile --db`` with it.

Compile time (wall) and peak memory (the compile process's maximum resident set) are
columns too; the tune's minutes are the budget. Every configuration is timed in a fresh
process (bench/measure.py), the configurations interleaved over ``--rounds`` rounds (the
median of the rounds is the figure; each round's is kept).

Rows resume: libraries, databases and each finished model's row are kept in
``bench/work/<model>/`` (tvm-intq's under the version of the code that built them, so a
change to the kernels rebuilds them), and the table is made from every row in the work folder
for the current version and settings. Run it in pieces (``--models``) and the table grows.
Results: ``bench/results/models/`` (results.json, results.md, results.png, with the command).

``--parts emulated``: for each of ``--emulated`` (default aarch64 riscv64), int8 vs fp32 built
for that target and the deterministic figures ``tvm-intq bench --target T`` gives (qemu
instructions per inference, llvm-mca cycle estimates per core;
:mod:`tvm_intq.deploy.emulated_figures`), in ``bench/results/<model>/emulated.*``. On aarch64
targets the same table has ONNX Runtime and LiteRT int8/fp32 on the same emulated core, counted
the same way (``tvm-intq bench --peers``; ``--no-peers`` leaves them out): ONNX models get ONNX
Runtime (fp32, and ``quantize_static`` int8 on the same calibration samples), ``.tflite``
models LiteRT (the float file and its ai-edge-quantizer int8 version in bench/models/); the
bundled model also has LiteRT versions there (tools/make_peer_tflite.py). Its models
(:func:`models`; default: ``bundled`` and ``light_resnet50_32``): ``light_resnet50`` and
``light_resnet50_32``, ``det``/``rec``/``cls`` (PP-OCRv4, eval/), ``palm_detection_lite`` and
``face_detection_short_range`` (MediaPipe, tools/make_mediapipe_tflite.py), at input sizes that
keep each model's counting run within minutes (each model's ``note``, printed with its table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
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
    """ONNX Runtime's int8 version of ``model`` calibrated on the samples of ``calib`` (an
    .npz), written to ``work``/ort_int8.onnx: :func:`tvm_intq.deploy.peer_bench.ort_int8_model`,
    the int8 model the emulated peers run too."""
    from tvm_intq.calibration import SampleSet
    from tvm_intq.deploy.peer_bench import ort_int8_model

    out = work / "ort_int8.onnx"
    if not out.exists():
        made = ort_int8_model(model, SampleSet(dict(np.load(calib))), work)
        made.replace(out)
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


EMULATED = ("bundled", "light_resnet50_32")  # the emulated part's default models


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


def _relative(data):
    """Paths under the repository written relative to it (results are committed)."""
    if isinstance(data, dict):
        return {k: _relative(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_relative(v) for v in data]
    return data.replace(f"{ROOT}/", "") if isinstance(data, str) else data


# ---------------------------------------------------------------------------------------------
# The host bench on real models (module docstring)
# ---------------------------------------------------------------------------------------------
CONFIGS = (
    "onnxruntime fp32",
    "onnxruntime int8",
    "tvm fp32",
    "tvm-intq int8 no db",
    "tvm-intq int8 tuned",
)
CODE = ("tvm_intq", "schedules", "relay_passes", "targets")


def code_version() -> str:
    """The commit, and a hash of the uncommitted changes to the code that builds libraries:
    tvm-intq's artifacts in the work folder are kept per version."""
    import hashlib

    def git(*a):
        return subprocess.run(
            ["git", *a], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout

    head = git("rev-parse", "--short=10", "HEAD").strip()
    diff = git("diff", "HEAD", "--", *CODE)
    return head + (f"-{hashlib.sha1(diff.encode()).hexdigest()[:8]}" if diff else "")


def timed(cmd, log: Path) -> tuple[str, float, float]:
    """Run ``cmd`` (from the repository root); ``(stdout, wall seconds, peak RSS in MB)`` of
    that process (its maximum resident set, from ``wait4``). Exits with its output on failure."""
    print("$ " + " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(map(str, cmd))}\n")
        f.flush()
        proc = subprocess.Popen(
            [str(c) for c in cmd], stdout=subprocess.PIPE, stderr=f, text=True, cwd=ROOT
        )
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        f.write(out + "\n")
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(out[-3000:])
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}; see {log}")
    return out, seconds, usage.ru_maxrss / 1024.0


def _coverage(out: str) -> str | None:
    return next((line for line in out.splitlines() if line.startswith("tuned kernels")), None)


def _phases(out: str) -> str | None:
    line = next((ln for ln in out.splitlines() if ln.startswith("compile time: ")), None)
    return None if line is None else line[len("compile time: ") :]


def build_configs(key: str, files: dict, work: Path, args) -> tuple[dict, dict]:
    """``({configuration: (kind, path)}, {configuration: compile facts})`` of one model;
    every artifact is made once (kept in ``work``, tvm-intq's per code version)."""
    log = work / "commands.log"
    lib_dir = work / args.version
    lib_dir.mkdir(parents=True, exist_ok=True)
    facts_path = lib_dir / "compile.json"
    facts = json.loads(facts_path.read_text()) if facts_path.is_file() else {}

    def save():
        facts_path.write_text(json.dumps(facts, indent=1))

    configs = {"onnxruntime fp32": ("ort", Path(files["onnx"]))}
    ort_dir = work / "ort"
    ort_dir.mkdir(exist_ok=True)
    quantized = ort_dir / "ort_int8.onnx"
    if not quantized.exists():
        code = (
            "import sys; sys.path.insert(0, 'bench'); from pathlib import Path; import run; "
            f"run.ort_int8(Path({str(files['onnx'])!r}), "
            f"run.calibration_part(Path({str(files['calib'])!r}), Path({str(ort_dir)!r})), "
            f"Path({str(ort_dir)!r}))"
        )
        _, secs, mb = timed([sys.executable, "-c", code], log)
        (ort_dir / "quantize.json").write_text(json.dumps({"seconds": secs, "peak_mb": mb}))
    configs["onnxruntime int8"] = ("ort", quantized)
    q = ort_dir / "quantize.json"
    if q.is_file():
        facts["onnxruntime int8"] = json.loads(q.read_text())

    data = ["--calib", files["calib"]]
    compiles = {
        "tvm fp32": (lib_dir / "fp32.so", ["--fp32", "--no-db"]),
        "tvm-intq int8 no db": (lib_dir / "int8_nodb.so", data + ["--no-db"]),
    }
    db = lib_dir / f"int8_{args.minutes:g}min_db"
    if args.minutes > 0:
        compiles["tvm-intq int8 tuned"] = (
            lib_dir / f"int8_{args.minutes:g}min.so",
            data + ["--db", db],
        )
    for name, (lib, extra) in compiles.items():
        if name == "tvm-intq int8 tuned" and not lib.exists():
            out, secs, mb = timed(
                CLI
                + ["tune", files["onnx"], *data, "--target", "host", "--minutes", args.minutes]
                + ["--threads", 1, "--db", db, "--no-progress"],
                log,
            )
            spent = next((ln for ln in out.splitlines() if ln.startswith("spent ")), "")
            spent = spent.split(";")[0]
            facts["tune"] = {"seconds": secs, "peak_mb": mb, "summary": spent}
            save()
        if not lib.exists():
            out, secs, mb = timed(
                CLI
                + ["compile", files["onnx"], *extra, "--target", "host", "-o", lib]
                + ["--no-progress"],
                log,
            )
            facts[name] = {
                "seconds": secs,
                "peak_mb": mb,
                "phases": _phases(out),
                "coverage": _coverage(out),
            }
            save()
        configs[name] = ("tvm", lib)
    return configs, facts


def bench_row(key: str, args) -> dict:
    """One model's row: build everything, then time the configurations in interleaved
    rounds. Kept in its work folder (``row-<settings>.json``) and reused on the next run."""
    import catalogue

    work = Path(args.work) / "models" / key
    row_path = work / args.version / f"row-{_settings(args)}.json"
    if row_path.is_file() and not args.retime:
        return json.loads(row_path.read_text())
    files = catalogue.model_files(key, work)
    configs, facts = build_configs(key, files, work, args)
    rounds = {name: {str(t): [] for t in args.threads} for name in configs}
    errors = {}
    for r in range(args.rounds):
        for threads in args.threads:
            order = list(configs)
            k = r % len(order)  # rotated each round: no configuration always goes first
            for name in order[k:] + order[:k]:
                if name in errors:
                    continue
                kind, path = configs[name]
                try:
                    rounds[name][str(threads)].append(
                        measure(kind, path, threads, Path(files["input"]), args.seconds)
                    )
                except SystemExit as err:  # one runtime failing leaves the others' figures
                    errors[name] = str(err)
    latency = {}
    for name, res in rounds.items():
        if name in errors:
            continue
        latency[name] = {
            t: {
                "median_ms": statistics.median(x["median_ms"] for x in runs),
                "rounds_ms": [x["median_ms"] for x in runs],
                **({"top1": runs[0]["top1"]} if "top1" in runs[0] else {}),
            }
            for t, runs in res.items()
        }
    row = _relative(
        {
            "key": key,
            "onnx": str(files["onnx"]),
            "calibration": files["note"],
            "latency": latency,
            "compile": facts,
            "errors": errors,
            "version": args.version,
            "minutes": args.minutes,
            "threads": args.threads,
            "rounds": args.rounds,
            "load_average": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
    )
    row_path.write_text(json.dumps(row, indent=1))
    return row


def _settings(args) -> str:
    return f"{args.minutes:g}min-t{'-'.join(map(str, args.threads))}-r{args.rounds}"


def collect_rows(args) -> list[dict]:
    """Every finished row in the work folder for this code version and these settings."""
    import catalogue

    rows = []
    for key in catalogue.keys():
        path = Path(args.work) / "models" / key / args.version / f"row-{_settings(args)}.json"
        if path.is_file():
            rows.append(json.loads(path.read_text()))
    return rows


def main(argv=None) -> int:
    import catalogue

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="KEY",
        help=f"models to bench (default: all): {', '.join(catalogue.keys())}; "
        "'ocr' and 'light' name each group",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=10.0,
        help="tuning budget per model (0: no tuned column, the no-db table alone)",
    )
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seconds", type=float, default=3.0, help="timing per configuration")
    p.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of every configuration"
    )
    p.add_argument("--retime", action="store_true", help="time the rows again (builds kept)")
    p.add_argument(
        "--emulated",
        nargs="*",
        default=["aarch64", "riscv64"],
        help="targets whose emulated board gives deterministic figures (none: skip)",
    )
    p.add_argument("--parts", nargs="+", default=["host"], choices=["host", "emulated"])
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
    p.add_argument(
        "--version",
        default=None,
        help="the code version whose artifacts and rows to use (default: this checkout's; "
        "an older one makes its table again)",
    )
    args = p.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from tvm_intq.reports.speed import models_bench_markdown, write_emulated, write_models_bench

    every = catalogue.keys() + [k for k in models() if k not in catalogue.keys()]
    wanted = []
    for key in args.models or every:
        group = [k for k in every if k.startswith(f"{key}_")] if key in ("ocr", "light") else [key]
        if not set(group) <= set(every):
            p.error(f"unknown model {key!r} (known: {', '.join(every)})")
        wanted += [k for k in group if k not in wanted]
    args.version = args.version or code_version()
    if "host" in args.parts:
        facts = machine()
        for key in wanted:
            print(f"== {key}", flush=True)
            try:
                bench_row(key, args)
            except RuntimeError as err:  # a model that fails to build: the others go on
                print(f"{key}: {err}", flush=True)
        rows = collect_rows(args)
        data = _relative(
            {
                "rows": rows,
                "configs": [c for c in CONFIGS if args.minutes > 0 or not c.endswith("tuned")],
                "threads": args.threads,
                "minutes": args.minutes,
                "rounds": args.rounds,
                "version": args.version,
                "machine": facts,
                "load_average_after": os.getloadavg(),
                "command": _command(),
                "timing": "median of per-call wall times (a Python loop over one batch-1 "
                "input in a fresh process per configuration, after a warm-up, >= "
                f"{args.seconds:g} s and >= 5 calls), the median over {args.rounds} "
                "interleaved rounds",
            }
        )
        written = write_models_bench(data, Path(args.out) / "models")
        print(models_bench_markdown(data))
        print("wrote " + ", ".join(map(str, written)))
    if "emulated" in args.parts and args.emulated:
        for key in [k for k in wanted if k in models()] or list(EMULATED):
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
