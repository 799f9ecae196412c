"""The model verbs: ``compile``, ``eval``, ``run``, ``export-qdq``, ``demo``.

Each command imports what it runs inside its function: ``tvm-intq --help`` must not load TVM.
"""

from __future__ import annotations

from pathlib import Path

from tvm_intq.cli.args import (
    add_compile_args,
    add_data_args,
    add_hybrid_args,
    add_model_args,
    add_quant_args,
    compile_database,
    quant_config,
    quantized_module,
    samples_for,
)
from tvm_intq.reports.files import table, write_json
from tvm_intq.reports.quantization import layer_table, plot_per_layer, summary


def add_parsers(sub) -> None:
    c = sub.add_parser(
        "compile", help="quantize an ONNX model and compile it to a pure-integer library"
    )
    add_model_args(c)
    add_data_args(c)
    add_quant_args(c)
    add_hybrid_args(c)
    c.add_argument("-o", "--output", required=True, help="library to write (.so)")
    c.add_argument("--report", help="write the quantization report (JSON, and a PNG beside it)")
    c.add_argument(
        "--fp32", action="store_true", help="build the float model through the same path instead"
    )
    c.add_argument("--no-progress", action="store_true")
    add_compile_args(c)

    v = sub.add_parser(
        "eval",
        help="quantize an ONNX model and measure it against float: top-1, "
        "output SQNR, per-layer error",
    )
    add_model_args(v)
    add_data_args(v)
    add_quant_args(v)
    add_hybrid_args(v)
    v.add_argument(
        "--per-layer",
        action="store_true",
        help="print every layer's Manhattan/Euclidean/SQNR error and plot SQNR bars and "
        "the worst layers' histograms with their clipping ranges",
    )
    v.add_argument("--out", help="folder for report.json (and per_layer.png with --per-layer)")
    v.add_argument("--no-progress", action="store_true")

    r = sub.add_parser("run", help="run a compiled library on an .npz of inputs")
    r.add_argument("library")
    r.add_argument(
        "--input", required=True, help=".npz, one array per model input, first axis = samples"
    )
    r.add_argument(
        "-o", "--output", required=True, help=".npz to write, one array per model output"
    )

    e = sub.add_parser(
        "export-qdq", help="calibrate an ONNX model and write it as a QDQ ONNX model"
    )
    e.add_argument("model", help="float ONNX model")
    e.add_argument(
        "--input-shape",
        action="append",
        metavar="NAME:D1xD2x...",
        help="fix a dynamic input shape (repeat per input)",
    )
    add_data_args(e)
    add_quant_args(e)
    e.add_argument("-o", "--output", required=True, help="QDQ ONNX model to write")
    e.add_argument("--no-progress", action="store_true")

    d = sub.add_parser("demo", help="the bundled model, float vs int8, side by side")
    d.add_argument("--out", default="out/demo", help="folder for the libraries and the report")
    d.add_argument("--calibrator", default=None, help="calibrator (default: percentile)")


def cmd_compile(args) -> int:
    from tvm_intq import api
    from tvm_intq.deploy.library import sidecar_path
    from tvm_intq.targets import get_target

    spec = get_target(args.target)
    out = Path(args.output)
    module, info, precision = quantized_module(args, spec)
    database = compile_database(args, spec, module)
    spec.export(api.build(module, spec, database=database), out)
    write_json(
        {
            "model": str(args.model),
            "target": spec.name,
            "precision": precision,
            "inputs": {k: list(v) for k, v in info.inputs.items()},
            "input_dtypes": info.input_dtypes,
            "outputs": info.outputs,
        },
        sidecar_path(out),
    )
    print(f"wrote {out} ({precision}, {spec.name})")
    return 0


def cmd_run(args) -> int:
    import numpy as np

    from tvm_intq.deploy.library import run_library

    outputs = run_library(args.library, args.input)
    np.savez(args.output, **outputs)
    print(f"wrote {args.output}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in outputs.items()))
    return 0


def cmd_demo(args) -> int:
    from tvm_intq import demo

    result = demo.run(Path(args.out), calibrator=args.calibrator)
    print()
    print(table(result["rows"], result["columns"]))
    print()
    for line in result["notes"]:
        print(line)
    return 0


def cmd_export_qdq(args) -> int:
    from tvm_intq.export.qdq import export_qdq, save
    from tvm_intq.frontends import import_model, parse_input_shapes

    shapes = parse_input_shapes(args.input_shape)
    _, info = import_model(args.model, shapes)
    result = export_qdq(args.model, samples_for(args, info), quant_config(args), shapes)
    save(result, args.output)
    print(f"wrote {args.output}: {len(result.tensors)} int8 tensors ({args.scheme})")
    if result.unmatched:
        print(f"left float (no ONNX tensor holds them): {', '.join(result.unmatched)}")
    return 0


def cmd_eval(args) -> int:
    from tvm_intq import api
    from tvm_intq.frontends import import_model, parse_input_shapes

    shapes = parse_input_shapes(args.input_shape)
    _, info = import_model(args.model, shapes)
    calib = samples_for(args, info)
    eval_samples = api.load_samples(args.eval_data, info, "--eval") if args.eval_data else None
    compiled = api.compile_onnx(
        args.model, calib, quant_config(args), args.target, shapes, eval_samples
    )
    print(summary(compiled.report))
    if args.per_layer:
        print()
        print(layer_table(compiled.report))
    if args.out:
        out = Path(args.out)
        written = [write_json(compiled.report, out / "report.json")]
        if args.per_layer:
            written.append(plot_per_layer(compiled.report, out / "per_layer.png"))
        print("wrote " + ", ".join(map(str, written)))
    return 0


COMMANDS = {
    "compile": cmd_compile,
    "eval": cmd_eval,
    "export-qdq": cmd_export_qdq,
    "run": cmd_run,
    "demo": cmd_demo,
}
