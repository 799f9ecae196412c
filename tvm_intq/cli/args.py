"""Argument groups several verbs share, and what they turn into (a QuantConfig, samples)."""

from __future__ import annotations

from pathlib import Path

from tvm_intq.calibration import CALIBRATORS
from tvm_intq.core.config import DEFAULT_CALIBRATOR, QuantConfig
from tvm_intq.core.schemes import SCHEMES
from tvm_intq.errors import IntqError
from tvm_intq.reports.quantization import summary, write_report


def add_quant_args(p):
    p.add_argument(
        "--scheme",
        default="hybrid-asym",
        choices=sorted(SCHEMES),
        help="activation/weight quantization scheme (default: hybrid-asym)",
    )
    p.add_argument(
        "--calibrator",
        default=None,
        choices=sorted(CALIBRATORS),
        help="how clipping ranges are chosen (default: percentile)",
    )
    p.add_argument(
        "--percentile",
        type=float,
        default=None,
        help="percentile for --calibrator percentile (default 99.99)",
    )
    p.add_argument(
        "--integer-only",
        action="store_true",
        help="fail, naming them, if any float op is left inside the integer program",
    )


def add_hybrid_args(p):
    g = p.add_argument_group("hybrid precision (layers kept in float)")
    g.add_argument(
        "--float-layers",
        metavar="auto|NAME,NAME",
        help="quantization points to keep in float: 'auto' keeps the fewest that "
        "meet --max-drop/--min-sqnr, or a comma-separated list of names (see the "
        "report's layers)",
    )
    g.add_argument(
        "--max-drop",
        type=float,
        help="with --float-layers auto: top-1 within this "
        "many points of float (--eval must hold labels)",
    )
    g.add_argument(
        "--min-sqnr",
        type=float,
        help="with --float-layers auto: output SQNR of at least this many dB",
    )


def quant_config(args):
    """The QuantConfig the quantization arguments describe (the hybrid-precision ones where the
    verb has them: ``export-qdq`` writes every layer quantized)."""
    options = {} if args.percentile is None else {"percentile": args.percentile}
    return QuantConfig(
        scheme=args.scheme,
        calibrator=args.calibrator or DEFAULT_CALIBRATOR,
        calibrator_options=options,
        integer_only=args.integer_only,
        progress=not args.no_progress,
        float_layers=getattr(args, "float_layers", None) or [],
        max_drop=getattr(args, "max_drop", None),
        min_sqnr=getattr(args, "min_sqnr", None),
    )


def add_model_args(p):
    p.add_argument(
        "model",
        help="float ONNX, .tflite or .pt2 (torch.export.save) model (or one already "
        "quantized: QDQ, QOperator, fully-integer TFLite, pt2e)",
    )
    p.add_argument(
        "--input-shape",
        action="append",
        metavar="NAME:D1xD2x...",
        help="fix a dynamic input shape (repeat per input)",
    )
    p.add_argument("--target", default="host", help="host, aarch64, aarch64-i8mm, riscv64")


def add_data_args(p):
    p.add_argument(
        "--calib",
        required=False,
        help=".npz with one array per model input (first axis = samples), or a folder of images",
    )
    p.add_argument(
        "--eval",
        dest="eval_data",
        help=".npz to measure error/accuracy on (may hold 'labels'); default: "
        "the last 10%% of --calib, kept out of calibration",
    )
    g = p.add_argument_group("image folder preprocessing (when --calib is a folder)")
    g.add_argument(
        "--mean", type=float, nargs="+", help="per-channel mean, after dividing by --scale"
    )
    g.add_argument("--std", type=float, nargs="+", help="per-channel std")
    g.add_argument("--scale", type=float, default=255.0, help="pixel divisor (default 255)")
    g.add_argument("--layout", default="NCHW", choices=["NCHW", "NHWC"])
    g.add_argument("--channel-order", default="RGB", choices=["RGB", "BGR"])


def samples_for(args, info):
    from tvm_intq.api import load_samples
    from tvm_intq.calibration import load_image_folder

    if not args.calib:
        raise IntqError("--calib is required to quantize (or pass --fp32)")
    path = Path(args.calib)
    if path.is_dir():
        if len(info.inputs) != 1:
            raise IntqError(
                f"--calib {path} is an image folder, but the model has "
                f"{len(info.inputs)} inputs; use an .npz"
            )
        if args.mean is None or args.std is None:
            raise IntqError(
                f"--calib {path} is an image folder: give its preprocessing with "
                "--mean and --std (and --scale, --layout, --channel-order if not the defaults)"
            )
        name, shape = next(iter(info.inputs.items()))
        return load_image_folder(
            path,
            name,
            shape,
            mean=args.mean,
            std=args.std,
            layout=args.layout,
            channel_order=args.channel_order,
            scale=args.scale,
        )
    return load_samples(path, info, "--calib")


def add_compile_args(c) -> None:
    g = c.add_argument_group("tuned kernels")
    g.add_argument(
        "--db",
        action="append",
        metavar="PATH",
        help="tuning database folder (from 'tvm-intq tune'; repeat to combine); "
        "default: the databases shipped for the target",
    )
    g.add_argument(
        "--no-db",
        action="store_true",
        help="ignore tuning databases (kernels get the default schedules)",
    )


def quantized_module(args, spec):
    """``(module, info, precision)``: the Relax module ``compile`` (and ``tune``) builds from
    the model arguments (pre-quantized, ``--fp32``, or quantized with ``--calib``)."""
    from tvm_intq import api
    from tvm_intq.frontends import import_model, parse_input_shapes
    from tvm_intq.frontends.prequantized import import_prequantized, is_prequantized_file
    from tvm_intq.relay_passes import float_ops
    from tvm_intq.relay_passes.check_integer import check_integer_only

    shapes = parse_input_shapes(args.input_shape)
    if not args.fp32 and is_prequantized_file(args.model):
        if args.calib:
            raise IntqError(
                f"{args.model} is already quantized (QDQ/QOperator nodes, pt2e "
                "quantize/dequantize): its own scales are used; drop --calib"
            )
        module, info = import_prequantized(args.model, shapes)
        if args.integer_only:
            check_integer_only(module)
        precision, left = "int8", float_ops(module)
        print(
            "pre-quantized model, its own scales and zero points kept: "
            + ("integer only" if not left else f"float ops left: {'; '.join(left)}")
        )
    elif args.fp32:
        mod, info = import_model(args.model, shapes)
        module, precision = api.prepare(mod), "fp32"
    else:
        _, info = import_model(args.model, shapes)
        calib = samples_for(args, info)
        eval_samples = api.load_samples(args.eval_data, info, "--eval") if args.eval_data else None
        config = quant_config(args)
        compiled = api.compile_onnx(args.model, calib, config, spec, shapes, eval_samples)
        module, precision = compiled.integer, "int8"
        print(summary(compiled.report))
        if args.report:
            json_path, png = write_report(compiled.report, args.report)
            print(f"report: {json_path} and {png}")
    return module, info, precision


def compile_database(args, spec, module):
    """The database ``compile`` applies, after printing which kernels it covers."""
    from tvm_intq.schedules import database as D

    if getattr(args, "no_db", False):
        print("tuning databases ignored (--no-db): kernels get the default schedules")
        return None
    folders = (
        [Path(p) for p in args.db] if getattr(args, "db", None) else D.shipped_databases(spec.name)
    )
    for f in folders:
        if not f.is_dir():
            raise IntqError(f"--db {f}: no such tuning database folder")
    if not folders:
        print(
            f"no tuning database for target {spec.name}: kernels get the default schedules "
            "(tvm-intq tune makes one)"
        )
        return None
    target = spec.target()
    tasks = D.extract_tasks(module, target, spec.int8_dot)
    db = D.union(folders)
    tuned, missing = D.coverage(db, tasks, target)
    print(
        f"tuned kernels: {len(tuned)} of {len(tasks)} "
        f"(databases: {', '.join(str(f) for f in folders)})"
    )
    if missing:
        print(
            f"no tuned record for {len(missing)} kernel(s), default schedules used: "
            + ", ".join(missing)
        )
    return db
