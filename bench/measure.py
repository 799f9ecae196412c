"""Time one configuration in a fresh process: ``python bench/measure.py ort|tvm MODEL ...``.

Run by bench/run.py once per (configuration, thread count), so each gets its own thread pool
(TVM reads ``TVM_NUM_THREADS`` once, when its pool starts). Both runtimes are timed the same
way: a Python loop calling the model on one batch-1 input, one ``perf_counter`` interval per
call, after a warm-up; prints one JSON object (latencies in ms, and top-1 on the samples
given).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _session(path, threads):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def _vm(path, threads):
    import tvm

    from tvm_intq.compiler.runner import Runner

    runner = Runner(tvm.runtime.load_module(path), ["x"], threads=threads)  # what a user calls
    return lambda x: runner({"x": x})[0]


def latencies(fn, x, warmup: int, seconds: float, max_iters: int, min_iters: int = 5) -> list:
    """Per-call ms: after ``warmup`` calls (or 2 s of them, at least 2: an untuned float
    model of the bench takes seconds per call), at least ``min_iters`` calls and ``seconds``."""
    start = time.perf_counter()
    for i in range(warmup):
        fn(x)
        if i >= 1 and time.perf_counter() - start > 2.0:
            break
    out, start = [], time.perf_counter()
    while len(out) < max_iters and (time.perf_counter() - start < seconds or len(out) < min_iters):
        t0 = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["ort", "tvm"])
    p.add_argument("model")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument(
        "--input",
        required=True,
        help=".npz: the model input (samples on axis 0), optionally 'labels'",
    )
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--max-iters", type=int, default=2000)
    p.add_argument("--accuracy-samples", type=int, default=500)
    args = p.parse_args()

    data = np.load(args.input)
    x = data[next(k for k in data.files if k != "labels")].astype(np.float32)
    fn = _session(args.model, args.threads) if args.kind == "ort" else _vm(args.model, args.threads)
    lat = latencies(fn, x[:1], warmup=50, seconds=args.seconds, max_iters=args.max_iters)
    result = {
        "median_ms": float(np.median(lat)),
        "p10_ms": float(np.percentile(lat, 10)),
        "p90_ms": float(np.percentile(lat, 90)),
        "iterations": len(lat),
    }
    if "labels" in data.files:
        n = min(args.accuracy_samples, len(x))
        pred = [int(np.argmax(fn(x[i : i + 1]))) for i in range(n)]
        result["top1"] = float(np.mean(np.array(pred) == data["labels"][:n]))
        result["accuracy_samples"] = n
    print(json.dumps(result))


if __name__ == "__main__":
    main()
