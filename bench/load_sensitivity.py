"""Does a busy machine slow tvm-intq more than ONNX Runtime? (issue 18; part of ``make bench``)

    python bench/load_sensitivity.py [--models unseen bundled] [--hogs 3] [--phases 3]
                                     [--calls 300] [--threads 1] [--no-db] [--out DIR]

Per model, four configurations loaded in this one process: tvm-intq int8 (``tvm-intq compile
--target host``, as a user builds it, with the shipped databases or ``--no-db``), TVM fp32
(``tvm-intq compile --fp32``), ONNX Runtime int8 (``quantize_static``: QDQ, per-channel int8
weights, calibrated on the samples tvm-intq calibrates on) and ONNX Runtime fp32; batch 1,
``--threads`` intra-op threads (TVM: ``TVM_NUM_THREADS``, set before TVM starts).

Quiet and loaded phases alternate (``--phases`` of each); a loaded phase runs beside
``--hogs`` busy-looping Python processes (``while True: pass``). In every phase the
configurations take turns, in rotated order, ``--calls`` timed calls each, ``--rounds`` times;
each call is timed on its own (wall: ``perf_counter``, CPU: ``thread_time`` of the calling
thread). Printed per configuration and phase:

* median / mean wall ms per call, and CPU ms per call: a call preempted by the OS waits off
  the CPU, so wall - CPU is the time the machine took away;
* ``mean10``: the median over groups of 10 consecutive calls of the group's mean, i.e. what
  ``time_evaluator(number=10)`` reports (and ``tvm_intq.compiler.runner.latency_ms``);
* loaded / quiet of each statistic, and each configuration over ONNX Runtime int8 and fp32.

Compare like with like: a per-call median of a call shorter than the scheduler's time slice
mostly misses the preemptions, a mean of 10 calls catches them, so the median of one runtime
against the ``time_evaluator`` figure of another is not a comparison (issue 18's reading).
Results: ``--out``/<model>.json and .md (default bench/results/load_sensitivity/).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLI = [sys.executable, "-m", "tvm_intq.cli"]
ORDER = ["tvm-intq int8", "tvm fp32", "onnxruntime int8", "onnxruntime fp32"]


def _files(key: str, work: Path) -> dict:
    """The model, its calibration samples and the input timed (a held-out sample)."""
    import unseen_cnn

    from tvm_intq.demo import bundled

    if key == "bundled":
        return {
            "onnx": Path(bundled("mnist_cnn.onnx")),
            "calib": Path(bundled("calib.npz")),
            "input": Path(bundled("heldout.npz")),
        }
    onnx_path, calib = work / "unseen_cnn.onnx", work / "calib.npz"
    if not onnx_path.exists():
        unseen_cnn.make_model(onnx_path)
    if not calib.exists():
        unseen_cnn.make_samples(calib, 64)
    return {"onnx": onnx_path, "calib": calib, "input": calib}


def _cli(args, log: Path) -> str:
    proc = subprocess.run([str(a) for a in CLI + args], capture_output=True, text=True, cwd=ROOT)
    log.open("a").write(f"$ tvm-intq {' '.join(map(str, args))}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        raise SystemExit(f"tvm-intq {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def build(key: str, work: Path, no_db: bool) -> tuple[dict, dict]:
    """``({configuration: (kind, path)}, model files)``; libraries are made once per work dir."""
    from run import calibration_part, ort_int8  # bench/run.py: the same ORT int8 as `make bench`

    work.mkdir(parents=True, exist_ok=True)
    f = _files(key, work)
    log = work / "commands.log"
    db = ["--no-db"] if no_db else []
    int8 = work / ("int8_nodb.so" if no_db else "int8.so")
    if not int8.exists():
        _cli(
            [
                "compile",
                f["onnx"],
                "--calib",
                f["calib"],
                "--target",
                "host",
                *db,
                "-o",
                int8,
                "--no-progress",
            ],
            log,
        )
    fp32 = work / ("fp32_nodb.so" if no_db else "fp32.so")
    if not fp32.exists():
        _cli(
            ["compile", f["onnx"], "--fp32", "--target", "host", *db, "-o", fp32, "--no-progress"],
            log,
        )
    ort8 = ort_int8(f["onnx"], calibration_part(f["calib"], work), work)
    return {
        "tvm-intq int8": ("tvm", int8),
        "tvm fp32": ("tvm", fp32),
        "onnxruntime int8": ("ort", ort8),
        "onnxruntime fp32": ("ort", f["onnx"]),
    }, f


def _callable(kind: str, path: Path, x: np.ndarray, threads: int):
    if kind == "ort":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda: sess.run(None, {name: x})
    import tvm

    from tvm_intq.compiler.runner import Runner

    meta = json.loads(Path(str(path) + ".json").read_text())
    runner = Runner(tvm.runtime.load_module(str(path)), list(meta["inputs"]), threads=threads)
    name = runner.input_names[0]
    return lambda: runner({name: x})  # what a tvm-intq user calls (tvm-intq run does the same)


class Hogs:
    """``n`` busy-looping processes, each in a session of its own as another user's job would
    be (with the kernel's autogroup scheduling, processes of one session share one slice of
    the machine); started and ended by us, by their handles."""

    CODE = "import sys; sys.stdout.write('r'); sys.stdout.flush()\nwhile True: pass"

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self):
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-S", "-c", self.CODE],
                stdout=subprocess.PIPE,
                start_new_session=True,
            )
            for _ in range(self.n)
        ]
        for p in self.procs:  # each is spinning once it has written its byte
            p.stdout.read(1)
        time.sleep(0.2)  # let the scheduler spread them over the CPUs
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
            p.stdout.close()
        self.procs = []


def _time_calls(fn, calls: int) -> tuple[list, list]:
    wall, cpu = [], []
    for _ in range(calls):
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        fn()
        t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
        wall.append((t1 - t0) / 1e6)
        cpu.append((c1 - c0) / 1e6)
    return wall, cpu


def _stats(wall: list, cpu: list, groups: list) -> dict:
    w, c = np.asarray(wall), np.asarray(cpu)
    return {
        "median_ms": float(np.median(w)),
        "mean_ms": float(w.mean()),
        "p90_ms": float(np.percentile(w, 90)),
        "cpu_median_ms": float(np.median(c)),
        "cpu_mean_ms": float(c.mean()),
        "mean10_ms": float(np.median(groups)),
        "off_cpu_share": float(1 - c.sum() / w.sum()),
        "calls": len(w),
    }


def measure(fns: dict, args) -> dict:
    """Per phase (quiet, loaded) and configuration: the statistics of :func:`_stats`."""
    data = {phase: {name: ([], [], []) for name in fns} for phase in ("quiet", "loaded")}
    loads = {"quiet": [], "loaded": []}
    names = list(fns)
    for i in range(args.phases):
        for phase in ("quiet", "loaded"):
            with Hogs(args.hogs if phase == "loaded" else 0):
                loads[phase].append(os.getloadavg()[0])
                for r in range(args.rounds):
                    k = (i * args.rounds + r) % len(names)
                    for name in names[k:] + names[:k]:  # rotated: no one always goes first
                        wall, cpu = _time_calls(fns[name], args.calls)
                        w, c, g = data[phase][name]
                        w += wall
                        c += cpu
                        g += [float(np.mean(wall[j : j + 10])) for j in range(0, len(wall) - 9, 10)]
            print(
                f"  phase {i + 1}/{args.phases} {phase} done "
                f"(load average {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    out = {phase: {name: _stats(*data[phase][name]) for name in names} for phase in data}
    out["load_average"] = {k: float(np.mean(v)) for k, v in loads.items()}
    return out


STATS = ("median_ms", "mean_ms", "mean10_ms", "cpu_median_ms")


def ratios(res: dict) -> dict:
    """loaded / quiet per configuration and statistic; each configuration / ORT int8, fp32."""
    names = list(res["quiet"])
    out = {
        "loaded_over_quiet": {
            n: {s: res["loaded"][n][s] / res["quiet"][n][s] for s in STATS} for n in names
        }
    }
    for ref in ("onnxruntime int8", "onnxruntime fp32"):
        out[f"over {ref}"] = {
            phase: {n: {s: res[phase][n][s] / res[phase][ref][s] for s in STATS} for n in names}
            for phase in ("quiet", "loaded")
        }
    return out


def markdown(model: str, res: dict, rat: dict, meta: dict) -> str:
    lines = [
        f"# {model}: quiet vs beside {meta['hogs']} CPU hogs, {meta['threads']} thread(s), batch 1",
        "",
        f"Load average: quiet phases {res['load_average']['quiet']:.1f}, loaded phases "
        f"{res['load_average']['loaded']:.1f} ({meta['cpus']} CPUs; the quiet phases are as "
        "quiet as the shared machine was).",
        "",
        "| configuration | phase | median ms | mean ms | mean10 ms | p90 ms | CPU ms | off-CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n in res["quiet"]:
        for phase in ("quiet", "loaded"):
            s = res[phase][n]
            lines.append(
                f"| {n} | {phase} | {s['median_ms']:.3f} | {s['mean_ms']:.3f} | "
                f"{s['mean10_ms']:.3f} | {s['p90_ms']:.3f} | {s['cpu_median_ms']:.3f} | "
                f"{100 * s['off_cpu_share']:.0f} % |"
            )
    lines += [
        "",
        "Loaded / quiet (how much the busy machine slowed each; compare rows):",
        "",
        "| configuration | median | mean | mean10 | CPU |",
        "|---|---:|---:|---:|---:|",
    ]
    for n, r in rat["loaded_over_quiet"].items():
        lines.append(f"| {n} | " + " | ".join(f"{r[s]:.2f}x" for s in STATS) + " |")
    for ref in ("onnxruntime int8", "onnxruntime fp32"):
        lines += [
            "",
            f"Over {ref} (same statistic, same phase; < 1: faster than {ref}):",
            "",
            "| configuration | quiet median | quiet mean10 | loaded median | loaded mean10 |",
            "|---|---:|---:|---:|---:|",
        ]
        for n, r in rat[f"over {ref}"]["quiet"].items():
            q, lo = r, rat[f"over {ref}"]["loaded"][n]
            lines.append(
                f"| {n} | {q['median_ms']:.2f} | {q['mean10_ms']:.2f} | "
                f"{lo['median_ms']:.2f} | {lo['mean10_ms']:.2f} |"
            )
    lines += [
        "",
        "mean10: median over groups of 10 consecutive calls of their mean "
        "(what `time_evaluator(number=10)` reports). off-CPU: share of the wall time the "
        "calling thread was not running (preempted).",
        "",
        f"Command: `{meta['command']}`",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models", nargs="+", default=["unseen", "bundled"], choices=["unseen", "bundled"]
    )
    p.add_argument("--hogs", type=int, default=3, help="busy-looping processes in loaded phases")
    p.add_argument("--phases", type=int, default=3, help="quiet/loaded phase pairs, alternating")
    p.add_argument("--rounds", type=int, default=2, help="turns of every configuration per phase")
    p.add_argument("--calls", type=int, default=300, help="timed calls per turn")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-db", action="store_true", help="tvm-intq without tuning databases")
    p.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME=LIBRARY",
        help="time another tvm-intq library beside them (e.g. one built before a "
        "change; its .json sidecar beside it); with several models, per model "
        "as MODEL:NAME=LIBRARY",
    )
    p.add_argument("--work", default=str(HERE / "work" / "load_sensitivity"))
    p.add_argument("--out", default=str(HERE / "results" / "load_sensitivity"))
    args = p.parse_args(argv)
    # Before TVM starts: its pool reads the variable (per parallel launch, and when it starts).
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    sys.path.insert(0, str(HERE))
    command = " ".join(
        [Path(sys.executable).name, "bench/load_sensitivity.py", *(argv or sys.argv[1:])]
    )
    for key in args.models:
        configs, files = build(key, Path(args.work) / key, args.no_db)
        for extra in args.extra:
            name, path = extra.split("=", 1)
            model, _, name = name.rpartition(":")
            if model in ("", key):
                configs[name] = ("tvm", Path(path))
        x = np.load(files["input"])
        x = x[next(k for k in x.files if k != "labels")][:1].astype(np.float32)
        fns = {n: _callable(kind, path, x, args.threads) for n, (kind, path) in configs.items()}
        for fn in fns.values():  # warm-up
            for _ in range(50):
                fn()
        print(
            f"{key}: {args.phases} x (quiet, beside {args.hogs} hogs), {args.threads} thread(s)",
            flush=True,
        )
        res = measure(fns, args)
        rat = ratios(res)
        meta = {
            "model": key,
            "hogs": args.hogs,
            "threads": args.threads,
            "no_db": args.no_db,
            "cpus": len(os.sched_getaffinity(0)),
            "command": command,
            "libraries": {n: str(path) for n, (_, path) in configs.items()},
        }
        md = markdown(key + (" (no database)" if args.no_db else ""), res, rat, meta)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = (
            key
            + ("_nodb" if args.no_db else "")
            + (f"_t{args.threads}" if args.threads != 1 else "")
        )
        (out / f"{stem}.json").write_text(
            json.dumps({**meta, "results": res, "ratios": rat}, indent=1)
        )
        (out / f"{stem}.md").write_text(md)
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
