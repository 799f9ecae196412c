"""``tvm-intq``: the command line. One subcommand per user verb; the work is in :mod:`api`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import IntqError


def _add_quant_args(p):
    from .calibration import CALIBRATORS
    from .schemes import SCHEMES

    p.add_argument("--scheme", default="hybrid-asym", choices=sorted(SCHEMES),
                   help="activation/weight quantization scheme (default: hybrid-asym)")
    p.add_argument("--calibrator", default=None, choices=sorted(CALIBRATORS),
                   help="how clipping ranges are chosen (default: percentile)")
    p.add_argument("--percentile", type=float, default=None,
                   help="percentile for --calibrator percentile (default 99.99)")
    p.add_argument("--integer-only", action="store_true",
                   help="fail, naming them, if any float op is left inside the integer program")


def _add_hybrid_args(p):
    g = p.add_argument_group("hybrid precision (layers kept in float)")
    g.add_argument("--float-layers", metavar="auto|NAME,NAME",
                   help="quantization points to keep in float: 'auto' keeps the fewest that "
                        "meet --max-drop/--min-sqnr, or a comma-separated list of names (see the "
                        "report's layers)")
    g.add_argument("--max-drop", type=float, help="with --float-layers auto: top-1 within this "
                   "many points of float (--eval must hold labels)")
    g.add_argument("--min-sqnr", type=float, help="with --float-layers auto: output SQNR of at "
                   "least this many dB")


def _config(args, api):
    """The QuantConfig the quantization arguments describe."""
    options = {} if args.percentile is None else {"percentile": args.percentile}
    return api.QuantConfig(scheme=args.scheme, calibrator=args.calibrator or api.DEFAULT_CALIBRATOR,
                           calibrator_options=options, integer_only=args.integer_only,
                           progress=not args.no_progress, float_layers=args.float_layers or [],
                           max_drop=args.max_drop, min_sqnr=args.min_sqnr)


def _add_model_args(p):
    p.add_argument("model", help="float ONNX or .tflite model (or one already quantized: QDQ, "
                                 "QOperator, fully-integer TFLite)")
    p.add_argument("--input-shape", action="append", metavar="NAME:D1xD2x...",
                   help="fix a dynamic input shape (repeat per input)")
    p.add_argument("--target", default="host", help="host, aarch64, aarch64-i8mm, riscv64")


def _add_data_args(p):
    p.add_argument("--calib", required=False,
                   help=".npz with one array per model input (first axis = samples), or a folder of images")
    p.add_argument("--eval", dest="eval_data",
                   help=".npz to measure error/accuracy on (may hold 'labels'); default: "
                        "the last 10%% of --calib, kept out of calibration")
    g = p.add_argument_group("image folder preprocessing (when --calib is a folder)")
    g.add_argument("--mean", type=float, nargs="+", help="per-channel mean, after dividing by --scale")
    g.add_argument("--std", type=float, nargs="+", help="per-channel std")
    g.add_argument("--scale", type=float, default=255.0, help="pixel divisor (default 255)")
    g.add_argument("--layout", default="NCHW", choices=["NCHW", "NHWC"])
    g.add_argument("--channel-order", default="RGB", choices=["RGB", "BGR"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tvm-intq", description="Int8 post-training quantization and deployment for Apache TVM")
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="quantize an ONNX model and compile it to a pure-integer library")
    _add_model_args(c)
    _add_data_args(c)
    _add_quant_args(c)
    _add_hybrid_args(c)
    c.add_argument("-o", "--output", required=True, help="library to write (.so)")
    c.add_argument("--report", help="write the quantization report (JSON, and a PNG beside it)")
    c.add_argument("--fp32", action="store_true", help="build the float model through the same path instead")
    c.add_argument("--no-progress", action="store_true")

    v = sub.add_parser("eval", help="quantize an ONNX model and measure it against float: top-1, "
                                    "output SQNR, per-layer error")
    _add_model_args(v)
    _add_data_args(v)
    _add_quant_args(v)
    _add_hybrid_args(v)
    v.add_argument("--per-layer", action="store_true",
                   help="print every layer's Manhattan/Euclidean/SQNR error and plot SQNR bars and "
                        "the worst layers' histograms with their clipping ranges")
    v.add_argument("--out", help="folder for report.json (and per_layer.png with --per-layer)")
    v.add_argument("--no-progress", action="store_true")

    r = sub.add_parser("run", help="run a compiled library on an .npz of inputs")
    r.add_argument("library")
    r.add_argument("--input", required=True, help=".npz, one array per model input, first axis = samples")
    r.add_argument("-o", "--output", required=True, help=".npz to write, one array per model output")

    e = sub.add_parser("export-qdq", help="calibrate an ONNX model and write it as a QDQ ONNX model")
    e.add_argument("model", help="float ONNX model")
    e.add_argument("--input-shape", action="append", metavar="NAME:D1xD2x...",
                   help="fix a dynamic input shape (repeat per input)")
    _add_data_args(e)
    _add_quant_args(e)
    e.add_argument("-o", "--output", required=True, help="QDQ ONNX model to write")
    e.add_argument("--no-progress", action="store_true")

    d = sub.add_parser("demo", help="the bundled model, float vs int8, side by side")
    d.add_argument("--out", default="out/demo", help="folder for the libraries and the report")
    d.add_argument("--calibrator", default=None, help="calibrator (default: percentile)")

    from . import boards_cli  # boards, tracker, board up, bench
    from . import tuning_cli  # tune, inspect; compile --db

    boards_cli.add_parsers(sub)
    tuning_cli.add_parsers(sub)
    tuning_cli.add_compile_args(c)
    return parser


def _samples_for(args, info):
    from . import api
    from .calibration import load_image_folder

    if not args.calib:
        raise IntqError("--calib is required to quantize (or pass --fp32)")
    path = Path(args.calib)
    if path.is_dir():
        if len(info.inputs) != 1:
            raise IntqError(f"--calib {path} is an image folder, but the model has "
                            f"{len(info.inputs)} inputs; use an .npz")
        if args.mean is None or args.std is None:
            raise IntqError(f"--calib {path} is an image folder: give its preprocessing with "
                            "--mean and --std (and --scale, --layout, --channel-order if not the defaults)")
        name, shape = next(iter(info.inputs.items()))
        return load_image_folder(path, name, shape, mean=args.mean, std=args.std, layout=args.layout,
                                 channel_order=args.channel_order, scale=args.scale)
    return api.load_samples(path, info, "--calib")


def quantized_module(args, spec):
    """``(module, info, precision)``: the Relax module ``compile`` (and ``tune``) builds from
    the model arguments (pre-quantized, ``--fp32``, or quantized with ``--calib``)."""
    from . import api, report
    from .frontend import import_onnx, parse_input_shapes
    from .prequantized import import_prequantized, is_prequantized_file
    from .relay_passes import float_ops
    from .relay_passes.check_integer import check_integer_only

    shapes = parse_input_shapes(args.input_shape)
    if not args.fp32 and is_prequantized_file(args.model):
        if args.calib:
            raise IntqError(f"{args.model} is already quantized (QDQ/QOperator nodes): its own "
                            "scales are used; drop --calib")
        module, info = import_prequantized(args.model, shapes)
        if args.integer_only:
            check_integer_only(module)
        precision, left = "int8", float_ops(module)
        print("pre-quantized model, its own scales and zero points kept: "
              + ("integer only" if not left else f"float ops left: {'; '.join(left)}"))
    elif args.fp32:
        mod, info = import_onnx(args.model, shapes)
        module, precision = api.prepare(mod), "fp32"
    else:
        _, info = import_onnx(args.model, shapes)
        calib = _samples_for(args, info)
        eval_samples = api.load_samples(args.eval_data, info, "--eval") if args.eval_data else None
        config = _config(args, api)
        compiled = api.compile_onnx(args.model, calib, config, spec, shapes, eval_samples)
        module, precision = compiled.integer, "int8"
        print(report.summary(compiled.report))
        if args.report:
            json_path, png = report.write_report(compiled.report, args.report)
            print(f"report: {json_path} and {png}")
    return module, info, precision


def cmd_compile(args) -> int:
    from . import api, report, tuning_cli
    from .targets import get_target

    spec = get_target(args.target)
    out = Path(args.output)
    module, info, precision = quantized_module(args, spec)
    database = tuning_cli.compile_database(args, spec, module)
    spec.export(api.build(module, spec, database=database), out)
    report.write_json({"model": str(args.model), "target": spec.name, "precision": precision,
                       "inputs": {k: list(v) for k, v in info.inputs.items()},
                       "input_dtypes": info.input_dtypes, "outputs": info.outputs},
                      api.sidecar_path(out))
    print(f"wrote {out} ({precision}, {spec.name})")
    return 0


def cmd_run(args) -> int:
    from . import api

    outputs = api.run_library(args.library, args.input)
    import numpy as np

    np.savez(args.output, **outputs)
    print(f"wrote {args.output}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in outputs.items()))
    return 0


def cmd_demo(args) -> int:
    from . import demo, report

    result = demo.run(Path(args.out), calibrator=args.calibrator)
    print()
    print(report.table(result["rows"], result["columns"]))
    print()
    for line in result["notes"]:
        print(line)
    return 0


def cmd_export_qdq(args) -> int:
    from . import api
    from .export_qdq import export_qdq, save
    from .frontend import import_onnx, parse_input_shapes

    shapes = parse_input_shapes(args.input_shape)
    _, info = import_onnx(args.model, shapes)
    options = {} if args.percentile is None else {"percentile": args.percentile}
    config = api.QuantConfig(scheme=args.scheme, calibrator=args.calibrator or api.DEFAULT_CALIBRATOR,
                             calibrator_options=options, progress=not args.no_progress)
    result = export_qdq(args.model, _samples_for(args, info), config, shapes)
    save(result, args.output)
    print(f"wrote {args.output}: {len(result.tensors)} int8 tensors ({args.scheme})")
    if result.unmatched:
        print(f"left float (no ONNX tensor holds them): {', '.join(result.unmatched)}")
    return 0


def cmd_eval(args) -> int:
    from . import api, report
    from .frontend import import_onnx, parse_input_shapes

    shapes = parse_input_shapes(args.input_shape)
    _, info = import_onnx(args.model, shapes)
    calib = _samples_for(args, info)
    eval_samples = api.load_samples(args.eval_data, info, "--eval") if args.eval_data else None
    compiled = api.compile_onnx(args.model, calib, _config(args, api), args.target, shapes,
                                eval_samples)
    print(report.summary(compiled.report))
    if args.per_layer:
        print()
        print(report.layer_table(compiled.report))
    if args.out:
        out = Path(args.out)
        written = [report.write_json(compiled.report, out / "report.json")]
        if args.per_layer:
            written.append(report.plot_per_layer(compiled.report, out / "per_layer.png"))
        print("wrote " + ", ".join(map(str, written)))
    return 0


COMMANDS = {"compile": cmd_compile, "eval": cmd_eval, "export-qdq": cmd_export_qdq, "run": cmd_run,
            "demo": cmd_demo}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .boards_cli import COMMANDS as BOARD_COMMANDS
    from .tuning_cli import COMMANDS as TUNING_COMMANDS

    try:
        return {**COMMANDS, **BOARD_COMMANDS, **TUNING_COMMANDS}[args.command](args)
    except IntqError as err:
        print(f"tvm-intq: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tvm-intq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
