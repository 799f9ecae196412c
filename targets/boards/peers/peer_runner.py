"""tvm-intq peer runner: one model in ONNX Runtime or LiteRT, run by the emulated board's own
Python (the aarch64 python3.11 and wheels build_peers.sh unpacks), with each counted inference
between two marker system calls that the instruction-count plugin (insn_count_plugin.c) records
- the same markers count_runner.cc makes around a call of one of our libraries.

    python3.11 peer_runner.py RUNTIME MODEL ARGS.npz WARMUP EMPTY CALLS OUT.npz

RUNTIME   onnxruntime (CPU execution provider, every graph optimization, 1 thread) or litert
          (ai_edge_litert's Interpreter, its default XNNPACK delegate, 1 thread)
ARGS.npz  the model's inputs in order, as arg0, arg1, ... (one batch each)
WARMUP    inferences before the first marker: the runtimes allocate and pack weights on the
          first calls, and the C allocator settles over a few more (as for our libraries)
EMPTY     marked regions with nothing in them, made right before the counted calls: the
          markers' own cost (a ctypes call), which the host takes off each call's count
CALLS     inferences counted: marker, inference, marker, inference, ..., marker
OUT.npz   the outputs of the last inference (out0, out1, ...), for the host to check

An inference is what a Python user writes: ``session.run(None, feeds)`` in ONNX Runtime;
``set_tensor`` of each input, ``invoke()``, ``get_tensor`` of each output in LiteRT. The Python
statements around it are counted too. A fully integer .tflite (int8 input and output, as
ai-edge-quantizer writes one) gets its input quantized with the model's own scale and zero
point before the counted calls, and its output dequantized after them.

Prints ``map 0x<start> <path>`` for the lowest guest address of every mapped file (so the host
maps executed blocks back to offsets in the libraries), then ``regions EMPTY CALLS``. Exits with
``os._exit`` right after the last marker: nothing after it (interpreter shutdown) reaches the
block profile, which the plugin keeps from the first marker on.

Determinism (the host sets these): ``PYTHONHASHSEED=0`` (string hashes decide dict and set
layouts), ``OPENBLAS_NUM_THREADS=1`` (numpy's idle OpenBLAS thread spins a varying number of
instructions), ``LD_BIND_NOW=1`` (lazy symbol binding would run on first calls); the garbage
collector is off here, so no collection falls inside a counted call.
"""

import ctypes
import gc
import os
import sys

#: must match insn_count_plugin.c: getpid (172 on aarch64 and riscv64) with a magic argument
MARKER_SYSCALL = 172
MARKER_MAGIC = 0x74766D2D696E7471  # "tvm-intq"


def onnxruntime_inference(model, args):
    import onnxruntime as ort

    # The Linux wheel (1.32) carries OneDS telemetry, which keeps a database under
    # ~/.cache/Microsoft: off (the host also sets ORT_DISABLE_TELEMETRY), so no telemetry
    # work runs beside the inferences.
    ort.disable_telemetry_events()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    if len(names) != len(args):
        raise SystemExit(f"peer_runner: {model} takes {len(names)} inputs, {len(args)} given")
    feeds = dict(zip(names, args))
    run = sess.run

    def infer():
        return run(None, feeds)

    return infer


def litert_inference(model, args):
    from ai_edge_litert.interpreter import Interpreter

    # The default op resolver applies the XNNPACK delegate (float and int8 kernels) to every op
    # it supports, as a LiteRT user on ARM gets it.
    interp = Interpreter(model_path=model, num_threads=1)
    interp.allocate_tensors()
    inputs, outputs = interp.get_input_details(), interp.get_output_details()
    if len(inputs) != len(args):
        raise SystemExit(f"peer_runner: {model} takes {len(inputs)} inputs, {len(args)} given")
    # A fully integer model (int8 inputs, as ai-edge-quantizer writes one) takes its inputs
    # quantized with the scale and zero point it records: done once here, outside the count,
    # like the dequantization of its outputs (784 + 10 elements for the bundled model).
    args = [_quantize(a, d) for a, d in zip(args, inputs)]
    set_tensor, invoke, get_tensor = interp.set_tensor, interp.invoke, interp.get_tensor
    pairs = [(d["index"], a) for d, a in zip(inputs, args)]
    out_index = [d["index"] for d in outputs]

    def infer():
        for index, a in pairs:
            set_tensor(index, a)
        invoke()
        return [get_tensor(index) for index in out_index]

    infer.decode = lambda results: [_dequantize(r, d) for r, d in zip(results, outputs)]
    return infer


def _quantize(a, detail):
    import numpy as np

    dtype = np.dtype(detail["dtype"])
    if a.dtype == dtype or dtype.kind not in "iu" or a.dtype.kind != "f":
        return a
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(a / scale) + zero_point, info.min, info.max).astype(dtype)


def _dequantize(r, detail):
    import numpy as np

    scale, zero_point = detail["quantization"]
    if r.dtype.kind not in "iu" or scale == 0:
        return r
    return ((r.astype(np.float32) - zero_point) * scale).astype(np.float32)


RUNTIMES = {"onnxruntime": onnxruntime_inference, "litert": litert_inference}


def mapped_files():
    """{path: lowest guest address} from /proc/self/maps (qemu-user shows guest addresses)."""
    out = {}
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/"):
                path, start = parts[5].strip(), int(parts[0].split("-")[0], 16)
                if path not in out or start < out[path]:
                    out[path] = start
    return out


def main(argv):
    if len(argv) != 8 or argv[1] not in RUNTIMES:
        sys.exit(
            f"usage: {argv[0]} {{{'|'.join(RUNTIMES)}}} MODEL ARGS.npz WARMUP EMPTY CALLS OUT.npz"
        )
    runtime, model, args_file, warmup, empty, calls, out_file = argv[1:]
    warmup, empty, calls = int(warmup), int(empty), int(calls)
    import numpy as np

    with np.load(args_file) as data:
        args = [np.ascontiguousarray(data[f"arg{i}"]) for i in range(len(data.files))]
    infer = RUNTIMES[runtime](model, args)
    syscall = ctypes.CDLL(None, use_errno=False).syscall
    syscall.restype = ctypes.c_long
    syscall.argtypes = [ctypes.c_long, ctypes.c_uint64]

    def mark():
        syscall(MARKER_SYSCALL, MARKER_MAGIC)

    for _ in range(warmup):
        outputs = infer()
    for path, start in sorted(mapped_files().items(), key=lambda kv: kv[1]):
        print(f"map {start:#x} {path}")
    print(f"regions {empty} {calls}")
    sys.stdout.flush()
    outputs = getattr(infer, "decode", lambda r: r)(outputs if warmup else infer())
    np.savez(out_file, **{f"out{i}": np.asarray(o) for i, o in enumerate(outputs)})
    gc.collect()
    gc.disable()
    # marks: one, one after each empty region, one after each counted call
    mark()
    for _ in range(empty):
        mark()
    for _ in range(calls):
        infer()
        mark()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
