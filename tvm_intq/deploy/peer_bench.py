"""tvm-intq against what ARM users run, on the same emulated core, counted the same way
(``tvm-intq bench --target aarch64 --peers``; issue 19).

    models, notes = peer_models("m.onnx", calib, work)        # {NAME: model file}, {NAME: why not}
    configs = peer_configs(models, [x], "aarch64", ("neoverse-n1",))
    configs.update(our_configs(emulated))                      # bench_emulated's figures

The peers: ONNX Runtime (MLAS kernels) on an ONNX model, fp32 as it is and int8 as
``quantize_static`` makes it (QDQ, per-channel int8 weights, int8 activations, on the same
calibration samples tvm-intq calibrates on); LiteRT (XNNPACK) on a ``.tflite``, fp32 as it is
and int8 as ai-edge-quantizer's static int8 recipe makes it, when that package is installed
(it is not a dependency: ``--peer-model litert-int8=FILE`` gives one made elsewhere, as
tools/make_peer_tflite.py and tools/make_mediapipe_tflite.py do). A peer that cannot load the
model's format (LiteRT on an ONNX file, ONNX Runtime on a ``.tflite``) is left out with a note
unless a model of its own is given.

Every configuration is ``{"instructions": int, "mca_cycles": {core: int}, ...}``: the
instructions of one warm inference on the target's emulated core (ours: the Relax VM's
``main`` called by the count runner; the peers: the Python call a user writes), and llvm-mca's
cycles of every block that inference executed, weighed by its executions, over all the code
it ran (runtime, libc, kernels) - :func:`tvm_intq.targets.mca.whole_call_cycles` for ours,
:func:`tvm_intq.targets.peers.peer_mca_cycles` for the peers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tvm_intq.errors import IntqError

#: The configurations, in report order (``--json``: ``{"configs": {NAME: ...}}``).
CONFIGS = (
    "tvm-intq-int8",
    "tvm-fp32",
    "onnxruntime-int8",
    "onnxruntime-fp32",
    "litert-int8",
    "litert-fp32",
)
PEERS = CONFIGS[2:]
#: Which of ours is compared with which peer precision.
OURS = {"int8": "tvm-intq-int8", "fp32": "tvm-fp32"}


def parse_peer_models(values) -> dict[str, Path]:
    """``--peer-model NAME=FILE`` values -> ``{NAME: Path}``; NAME one of :data:`PEERS`."""
    out = {}
    for v in values or ():
        name, sep, path = v.partition("=")
        if not sep or name not in PEERS:
            raise IntqError(
                f"--peer-model {v!r}: expected NAME=FILE with NAME in {', '.join(PEERS)}"
            )
        if not Path(path).is_file():
            raise IntqError(f"--peer-model {name}: {path}: no such file")
        out[name] = Path(path)
    return out


def ort_ready(model: Path, work: Path) -> Path:
    """``model`` as ``quantize_static`` can take it: per-channel QDQ needs opset >= 13 (the axis
    of DequantizeLinear), and no graph input may be an initializer (IR version 3 lists every
    weight as an input, as onnx's light models do: ORT's optimizer folds those weights away
    but keeps the inputs, and calibration then demands a feed for each)."""
    import onnx
    from onnx import version_converter

    m = onnx.load(str(model))
    inits = {i.name for i in m.graph.initializer}
    opset = max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    if opset >= 13 and not any(i.name in inits for i in m.graph.input):
        return Path(model)
    keep = [i for i in m.graph.input if i.name not in inits]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    m.ir_version = max(m.ir_version, 4)  # the first to allow initializers off the inputs
    out = work / f"{Path(model).stem}.ort_ready.onnx"
    onnx.save(version_converter.convert_version(m, max(opset, 13)), str(out))
    return out


def ort_int8_model(model, calib, work) -> Path:
    """ONNX Runtime's int8 version of the float ONNX ``model``, as its documentation makes one:
    ``quant_pre_process`` then ``quantize_static`` (QDQ, per-channel int8 weights, int8
    activations, MinMax) on ``calib`` (a SampleSet: the samples tvm-intq calibrates on).
    Written once to ``work``/<stem>.ort_int8.onnx and reused."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    stem = Path(model).stem
    out = work / f"{stem}.ort_int8.onnx"
    if out.exists():
        return out
    pre = work / f"{stem}.ort_pre.onnx"
    quant_pre_process(str(ort_ready(Path(model), work)), str(pre))
    arrays = calib.arrays

    class Reader(CalibrationDataReader):
        def __init__(self):
            n = calib.num_samples
            self.samples = iter({k: v[i : i + 1] for k, v in arrays.items()} for i in range(n))

        def get_next(self):
            return next(self.samples, None)

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


def litert_int8_model(model, calib, work) -> Path:
    """LiteRT's int8 version of the float ``.tflite`` ``model``: ai-edge-quantizer's static
    int8 recipe (int8 weights per channel, int8 activations, min/max) calibrated on ``calib``
    through the model's first signature. ai-edge-quantizer is not a dependency (it pulls its
    own LiteRT): :class:`IntqError` when it is not installed."""
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError as err:
        raise IntqError(
            "ai-edge-quantizer is not installed: LiteRT int8 needs it (pip install "
            "ai-edge-quantizer), or give one with --peer-model litert-int8=FILE"
        ) from err
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    out = work / f"{Path(model).stem}.int8.tflite"
    if out.exists():
        return out
    qt = quantizer.Quantizer(str(model))
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_path=str(model)).get_signature_list()
    if not signatures:
        raise IntqError(
            f"{model}: ai-edge-quantizer calibrates through a signature and this model has "
            "none (tools/make_mediapipe_tflite.py adds one)"
        )
    key, sig = next(iter(signatures.items()))
    names = list(sig["inputs"])
    feeds = [
        {name: calib.arrays[k][i : i + 1] for name, k in zip(names, calib.arrays)}
        for i in range(calib.num_samples)
    ]
    qt.quantize(qt.calibrate({key: feeds})).export_model(str(out), overwrite=True)
    return out


def peer_models(model, calib, work, given: dict | None = None) -> tuple[dict, dict]:
    """``({NAME: model file}, {NAME: why it is left out})`` for the peers of :data:`PEERS` on
    ``model`` (ONNX or ``.tflite``): made from it where the peer loads its format, taken from
    ``given`` (``--peer-model``) first."""
    from tvm_intq.targets.peers import runtime_for

    given = dict(given or {})
    own = runtime_for(model)
    models, notes = {}, {}
    for name in PEERS:
        runtime, precision = name.rsplit("-", 1)
        if name in given:
            models[name] = Path(given[name])
        elif runtime != own:
            kind = "ONNX" if runtime == "onnxruntime" else "TFLite"
            notes[name] = (
                f"{runtime} does not load {Path(model).name} (it runs {kind} models); "
                f"--peer-model {name}=FILE gives it one"
            )
        elif precision == "fp32":
            models[name] = Path(model)
        else:
            try:
                make = ort_int8_model if runtime == "onnxruntime" else litert_int8_model
                models[name] = make(model, calib, work)
            except IntqError as err:
                notes[name] = str(err)
    return models, notes


def peer_configs(
    models: dict, inputs, target: str, cores, on_event=None, cache=None
) -> tuple[dict, dict]:
    """``({NAME: figures}, {NAME: why it failed})``: each peer model counted on ``target``'s
    emulated core (:func:`tvm_intq.targets.peers.peer_figures`) on ``inputs``. A peer whose
    run fails (an operator it lacks) is left out with the error as its note. ``cache``: a
    folder keeping each peer's figures under a hash of what they depend on, so re-running our side
    of a table does not count the peers again (they do not change with our libraries): the
    model file, the inputs, the core, the llvm-mca cores, the peer runner, the peers' wheels
    and the llvm-mca code."""
    import hashlib
    import json

    from tvm_intq.targets import peers as peers_module
    from tvm_intq.targets.peers import peer_cpu, peer_figures, peers_dir

    # what a peer's figures depend on besides its model and inputs: the runner in the guest,
    # the wheels it runs (VERSIONS lists them), and the block-to-cycles code
    code = Path(peers_module.__file__).parent
    code_files = [
        code / "boards" / "peers" / "peer_runner.py",
        code / "mca.py",
        peers_dir() / "VERSIONS",
    ]
    configs, notes = {}, {}
    for name, model in models.items():
        h = hashlib.sha256(Path(model).read_bytes())
        for a in inputs:
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(f"{peer_cpu(target)} {sorted(cores)}".encode())
        for f in code_files:
            h.update(f.read_bytes())
        path = Path(cache) / f"{name}-{h.hexdigest()[:16]}.json" if cache else None
        if path is not None and path.is_file():
            configs[name] = json.loads(path.read_text())
            continue
        if on_event:
            on_event(f"peer {name}: {Path(model).name} on the emulated core of {target}")
        try:
            fig = peer_figures(model, inputs, target=target, cores=tuple(cores))
        except IntqError as err:
            notes[name] = f"could not run: {str(err)[-300:]}"
            continue
        fig["mca_modelled"] = {k: round(v, 4) for k, v in fig["mca_modelled"].items()}
        configs[name] = fig
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(fig, indent=1) + "\n")
    return configs, notes


def our_configs(emulated: dict) -> dict:
    """tvm-intq int8 and TVM fp32 as configurations, from :func:`~tvm_intq.deploy.
    emulated_figures.emulated_figures` (which counts them over the whole call on aarch64)."""
    out = {}
    for precision, name in OURS.items():
        prog = emulated["programs"].get(precision)
        if prog is None or "mca_whole_call" not in prog:
            continue
        out[name] = {
            "instructions": prog["instructions"],
            "instructions_per_call": prog["instructions_per_call"],
            "mca_cycles": {c: round(v["total"]) for c, v in prog["mca_whole_call"].items()},
            "mca_modelled": {c: v["modelled"] for c, v in prog["mca_whole_call"].items()},
            "mca_kernel_cycles": {c: round(v["total"]) for c, v in prog["mca_cycles"].items()},
            "instructions_by_file": prog.get("instructions_by_file", {}),
            "dot_instructions": prog.get("dot_instructions", {}),
            "library": prog["library"],
        }
    return out


def compare(configs: dict, core: str) -> dict:
    """How tvm-intq int8 stands against the better peer int8 on ``core``: ``{"best_peer",
    "instructions": peer / ours, "mca_cycles": peer / ours}`` (above 1: we execute fewer),
    or ``{}`` without both sides."""
    ours = configs.get("tvm-intq-int8")
    peers = [configs[n] | {"name": n} for n in ("onnxruntime-int8", "litert-int8") if n in configs]
    if not ours or not peers:
        return {}
    best = min(peers, key=lambda f: f["mca_cycles"].get(core, f["instructions"]))
    return {
        "best_peer": best["name"],
        "instructions": best["instructions"] / ours["instructions"],
        "mca_cycles": best["mca_cycles"][core] / ours["mca_cycles"][core]
        if core in best["mca_cycles"] and ours["mca_cycles"].get(core)
        else None,
    }


def multiply_accumulates(mod) -> dict:
    """``{"conv": MACs, "dense": MACs}`` of one call of ``mod``'s ``main`` (a Relax module
    with static shapes: the integer program): every ``nn.conv2d`` (depthwise and grouped
    included: out elements x input channels per group x kernel window) and ``matmul``."""
    import tvm
    from tvm import relax

    totals = {"conv": 0, "dense": 0}

    def shape(expr):
        return [int(d) for d in expr.ty.shape]

    def visit(e):
        if not (isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op)):
            return
        if e.op.name == "relax.nn.conv2d":
            w = shape(e.args[1])  # OIHW (I per group) as the frontends give it
            layout = str(e.attrs.kernel_layout)
            per_output = int(np.prod(w)) // w[layout.index("O")]
            totals["conv"] += int(np.prod(shape(e))) * per_output
        elif e.op.name == "relax.matmul":
            a = shape(e.args[0])
            totals["dense"] += int(np.prod(shape(e))) * a[-1]

    for _, f in mod.functions.items():
        if isinstance(f, relax.Function):
            relax.analysis.post_order_visit(f.body, visit)
    return totals


def conv_efficiency(kernel_instructions: dict, macs: dict, peak: int) -> dict:
    """Our conv kernels' MACs per executed instruction against ``peak`` (the MACs of one
    instruction of the kind they are built on: ``sdot`` 16, ``smmla`` 32, RVV ``vwmacc`` at
    VLEN 128 on int8 16): ``{"macs", "instructions", "macs_per_instruction",
    "peak_fraction"}``. The conv kernels are the kernels named after a convolution
    (``conv2d_*``, ``depthwise_*``), their fused epilogues and padding included."""
    conv = sum(n for k, n in kernel_instructions.items() if _is_conv(k))
    per = macs["conv"] / conv if conv else 0.0
    return {
        "macs": macs["conv"],
        "instructions": round(conv),
        "macs_per_instruction": per,
        "peak": peak,
        "peak_fraction": per / peak if peak else None,
    }


def _is_conv(kernel: str) -> bool:
    return "conv" in kernel or kernel.startswith("depthwise")
