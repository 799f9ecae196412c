"""The model verbs: ``compile``, ``eval``, ``run``, ``export-qdq``, ``demo``.

Each command imports what it runs inside its function: ``tvm-intq --help`` must not load TVM.
"""

from __future__ import annotations

from pathlib import Path

from tvm_intq.calibration import CALIBRATORS
from tvm_intq.cli.args import (
    add_compile_args,
    add_data_args,
    add_hybrid_args,
    add_model_args,
    add_quant_args,
    check_db_args,
    check_labels_for_max_drop,
    check_prequantized_flags,
    compile_database,
    progress_line,
    quant_config,
    quantized_module,
    samples_for,
)
from tvm_intq.cli.checks import (
    check_data_args,
    check_fp32,
    check_input_file,
    check_model_file,
    check_output_file,
    check_output_folder,
    check_quant_args,
    model_inputs,
)
from tvm_intq.errors import IntqError
from tvm_intq.files import check_distinct
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
    d.add_argument(
        "--calibrator", choices=sorted(CALIBRATORS), help="calibrator (default: percentile)"
    )


def check_compile(args):
    """Everything ``compile`` can check before it imports the model: ``(library, sidecar,
    report)`` paths."""
    from tvm_intq.deploy.sidecar import sidecar_path
    from tvm_intq.frontends.prequantized import is_prequantized_file
    from tvm_intq.targets import get_target

    check_model_file(args.model)
    check_data_args(args)
    check_quant_args(args)
    check_fp32(args)
    check_db_args(args)
    get_target(args.target)
    if not args.fp32 and is_prequantized_file(args.model):
        check_prequantized_flags(args)
    reads = model_inputs(args)
    out = check_output_file(args.output, "-o", reads)
    sidecar = check_output_file(sidecar_path(out), "-o (its sidecar)", reads)
    outputs = [("-o", out), ("the sidecar of -o", sidecar)]
    report = None
    if args.report:
        report = check_output_file(args.report, "--report", reads, create_folder=True)
        png = check_output_file(
            report.with_suffix(".png"), "--report (its plot)", reads, create_folder=True
        )
        outputs += [("--report", report), ("the plot of --report", png)]
    check_distinct(outputs)
    return out


def cmd_compile(args) -> int:
    out = check_compile(args)

    from tvm_intq import api
    from tvm_intq.compiler.phases import Phases
    from tvm_intq.deploy.library import save_library
    from tvm_intq.frontends.prequantized import is_prequantized_file
    from tvm_intq.targets import get_target

    spec = get_target(args.target)
    with Phases(
        api.COMPILE_PHASES + ("tuning database", "build"), enabled=not args.no_progress
    ) as phases:
        if args.fp32 or is_prequantized_file(args.model):
            with phases.phase("import"):
                module, info, precision = quantized_module(args, spec, phases)
        else:
            module, info, precision = quantized_module(args, spec, phases)
        with phases.phase("tuning database"):
            database = compile_database(args, spec, module)
        with phases.phase("build"):
            save_library(
                api.build(module, spec, database=database),
                spec,
                out,
                {
                    "model": str(args.model),
                    "target": spec.name,
                    "precision": precision,
                    "inputs": {k: list(v) for k, v in info.inputs.items()},
                    "input_dtypes": info.input_dtypes,
                    "outputs": info.outputs,
                },
            )
    print(f"wrote {out} ({precision}, {spec.name})")
    print(f"compile time: {phases.summary()}")
    return 0


def cmd_run(args) -> int:
    from tvm_intq.deploy.sidecar import check_library, sidecar_path

    check_input_file(args.input, "--input", "input file")
    reads = [
        ("library", args.library),
        ("sidecar", sidecar_path(args.library)),
        ("--input file", args.input),
    ]
    out = check_output_file(args.output, "-o", reads)
    check_library(args.library)  # before TVM is loaded: the one-line answers come at once

    from tvm_intq.deploy.library import run_library, save_outputs

    outputs = run_library(args.library, args.input)
    save_outputs(outputs, out)
    print(f"wrote {out}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in outputs.items()))
    return 0


def cmd_demo(args) -> int:
    from tvm_intq import demo

    out = check_output_folder(args.out, "--out")
    result = demo.run(out, calibrator=args.calibrator)
    print()
    print(table(result["rows"], result["columns"]))
    print()
    for line in result["notes"]:
        print(line)
    return 0


def cmd_export_qdq(args) -> int:
    check_model_file(args.model)
    check_data_args(args)
    check_quant_args(args)
    if args.scheme == "auto":
        raise IntqError(
            "--scheme auto picks a scheme per layer by measured error, which needs a compile; "
            "export-qdq writes one scheme: give hybrid-asym, symmetric or pow2"
        )
    if args.integer_only:
        raise IntqError(
            "--integer-only checks the compiled program; export-qdq compiles none (it would "
            "be ignored): use it with compile"
        )
    out = check_output_file(args.output, "-o", model_inputs(args))

    from tvm_intq import api
    from tvm_intq.export.qdq import export_qdq, save
    from tvm_intq.frontends import import_model, parse_input_shapes

    shapes = parse_input_shapes(args.input_shape)
    _, info = import_model(args.model, shapes)
    calib = samples_for(args, info)
    if args.eval_data is None:  # calibrate on what compile calibrates on: the same integers
        calib, _ = api.split_holdout(calib)
    result = export_qdq(args.model, calib, quant_config(args), shapes)
    save(result, out)
    print(f"wrote {out}: {len(result.tensors)} int8 tensors ({args.scheme})")
    if result.unmatched:
        print(f"left float (no ONNX tensor holds them): {', '.join(result.unmatched)}")
    return 0


def cmd_eval(args) -> int:
    check_model_file(args.model)
    check_data_args(args)
    check_quant_args(args)
    if args.out:
        out = check_output_folder(args.out, "--out", model_inputs(args))
        for name in ("report.json", "per_layer.png"):
            check_output_file(out / name, "--out", model_inputs(args), create_folder=True)

    from tvm_intq import api
    from tvm_intq.frontends import import_model, parse_input_shapes

    shapes = parse_input_shapes(args.input_shape)
    _, info = import_model(args.model, shapes)
    calib = samples_for(args, info)
    eval_samples = api.load_samples(args.eval_data, info, "--eval") if args.eval_data else None
    check_labels_for_max_drop(args, calib, eval_samples)
    compiled = api.compile_onnx(
        args.model, calib, quant_config(args), args.target, shapes, eval_samples, log=progress_line
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
