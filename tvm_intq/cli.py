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


def _add_model_args(p):
    p.add_argument("model", help="float ONNX model")
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
    c.add_argument("-o", "--output", required=True, help="library to write (.so)")
    c.add_argument("--report", help="write the quantization report (JSON, and a PNG beside it)")
    c.add_argument("--fp32", action="store_true", help="build the float model through the same path instead")
    c.add_argument("--no-progress", action="store_true")

    r = sub.add_parser("run", help="run a compiled library on an .npz of inputs")
    r.add_argument("library")
    r.add_argument("--input", required=True, help=".npz, one array per model input, first axis = samples")
    r.add_argument("-o", "--output", required=True, help=".npz to write, one array per model output")

    d = sub.add_parser("demo", help="the bundled model, float vs int8, side by side")
    d.add_argument("--out", default="out/demo", help="folder for the libraries and the report")
    d.add_argument("--calibrator", default=None, help="calibrator (default: percentile)")
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


def cmd_compile(args) -> int:
    from . import api, report
    from .frontend import import_onnx, parse_input_shapes
    from .targets import get_target

    spec = get_target(args.target)
    shapes = parse_input_shapes(args.input_shape)
    out = Path(args.output)
    if args.fp32:
        mod, info = import_onnx(args.model, shapes)
        module, precision = api.prepare(mod), "fp32"
    else:
        _, info = import_onnx(args.model, shapes)
        calib = _samples_for(args, info)
        eval_samples = api.load_samples(args.eval_data, info, "--eval") if args.eval_data else None
        options = {} if args.percentile is None else {"percentile": args.percentile}
        config = api.QuantConfig(scheme=args.scheme, calibrator=args.calibrator or api.DEFAULT_CALIBRATOR,
                                 calibrator_options=options, integer_only=args.integer_only,
                                 progress=not args.no_progress)
        compiled = api.compile_onnx(args.model, calib, config, spec, shapes, eval_samples)
        module, precision = compiled.integer, "int8"
        print(report.summary(compiled.report))
        if args.report:
            json_path, png = report.write_report(compiled.report, args.report)
            print(f"report: {json_path} and {png}")
    spec.export(api.build(module, spec), out)
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


COMMANDS = {"compile": cmd_compile, "run": cmd_run, "demo": cmd_demo}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except IntqError as err:
        print(f"tvm-intq: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tvm-intq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
