"""Argument groups several verbs share, and what they turn into (a QuantConfig, samples)."""

from __future__ import annotations

import sys
from pathlib import Path

from tvm_intq.calibration import CALIBRATORS
from tvm_intq.core.config import DEFAULT_CALIBRATOR, QuantConfig
from tvm_intq.core.schemes import SCHEMES
from tvm_intq.errors import IntqError
from tvm_intq.reports.quantization import summary, write_report

DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")


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
        help="with --float-layers auto: SQNR of at least this many dB on every output and "
        "every part a detection head concatenates into one (boxes, scores)",
    )
    g.add_argument(
        "--search-minutes",
        type=float,
        default=10.0,
        help="time limit of the searches (--scheme auto, --float-layers auto) together; they "
        "stop with the best configuration measured (default 10; 0: no limit)",
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
        search_minutes=getattr(args, "search_minutes", 10.0) or None,
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
    g.add_argument("--scale", type=float, help="pixel divisor (default 255)")
    g.add_argument("--layout", choices=["NCHW", "NHWC"], help="(default NCHW)")
    g.add_argument("--channel-order", choices=["RGB", "BGR"], help="(default RGB)")


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
            layout=args.layout or "NCHW",
            channel_order=args.channel_order or "RGB",
            scale=255.0 if args.scale is None else args.scale,
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
    c.add_argument(
        "-v", "--verbose", action="store_true", help="name every kernel without a tuned record"
    )


def check_db_args(args) -> None:
    """``--db`` folders exist (they are read) and do not come with ``--no-db``."""
    if getattr(args, "no_db", False) and getattr(args, "db", None):
        raise IntqError("--no-db ignores tuning databases; --db names one: give one or the other")
    for f in getattr(args, "db", None) or []:
        p = Path(f)
        if not p.exists():
            raise IntqError(f"--db {p}: no such tuning database folder")
        if not p.is_dir():
            raise IntqError(f"--db {p}: is a file; a tuning database is a folder (tvm-intq tune)")
        # TVM's JSONDatabase files (schedules/database.py), checked before the long work.
        missing = [n for n in DATABASE_FILES if not (p / n).is_file()]
        if missing:
            raise IntqError(
                f"--db {p}: not a tuning database ({' and '.join(missing)} missing); "
                "make one with tvm-intq tune"
            )


def check_labels_for_max_drop(args, calib, eval_samples) -> None:
    """``--max-drop`` is measured in top-1 points: the evaluation samples must hold labels
    (said before calibration, not after)."""
    if getattr(args, "max_drop", None) is None:
        return
    data = eval_samples if eval_samples is not None else calib
    if data.extras.get("labels") is None:
        where = f"--eval {args.eval_data}" if eval_samples is not None else f"--calib {args.calib}"
        raise IntqError(
            f"--max-drop is measured in top-1 points, but {where} holds no 'labels'; "
            "give labelled --eval data or use --min-sqnr"
        )
    if getattr(args, "min_sqnr", None) is not None:
        print(
            f"hybrid precision target: top-1 within {args.max_drop:g} points of float "
            f"and output SQNR >= {args.min_sqnr:g} dB (both must hold)"
        )


def quantized_module(args, spec, phases=None):
    """``(module, info, precision)``: the Relax module ``compile`` (and ``tune``) builds from
    the model arguments (pre-quantized, ``--fp32``, or quantized with ``--calib``).
    ``phases``: the caller's :class:`~tvm_intq.compiler.phases.Phases` bar (compile's)."""
    from tvm_intq import api
    from tvm_intq.frontends import import_model, parse_input_shapes
    from tvm_intq.frontends.prequantized import is_prequantized_file

    shapes = parse_input_shapes(args.input_shape)
    quantizing = not args.fp32 and not is_prequantized_file(args.model)
    if phases is not None and not quantizing:  # nothing to calibrate: import is the phase
        for name in api.COMPILE_PHASES[1:]:
            phases.skip(name)
    if not args.fp32 and is_prequantized_file(args.model):
        return _prequantized_module(args, spec, shapes)
    if args.fp32:
        mod, info = import_model(args.model, shapes)
        return api.prepare(mod), info, "fp32"
    _, info = import_model(args.model, shapes)
    calib = samples_for(args, info)
    eval_samples = api.load_samples(args.eval_data, info, "--eval") if args.eval_data else None
    check_labels_for_max_drop(args, calib, eval_samples)
    config = quant_config(args)
    compiled = api.compile_onnx(
        args.model, calib, config, spec, shapes, eval_samples, phases=phases, log=progress_line
    )
    print(summary(compiled.report))
    if getattr(args, "report", None):
        json_path, png = write_report(compiled.report, args.report)
        print(f"report: {json_path} and {png}")
    return compiled.integer, info, "int8"


def check_prequantized_flags(args) -> None:
    """A model quantized already keeps its own scales: quantization flags would be ignored,
    so they are refused (before any work: ``compile`` checks this with its other flags)."""
    ignored = [
        flag
        for flag, value in (
            ("--calib", args.calib),
            ("--calibrator", args.calibrator),
            ("--percentile", args.percentile),
            ("--scheme", None if args.scheme == "hybrid-asym" else args.scheme),
            ("--float-layers", getattr(args, "float_layers", None)),
            ("--max-drop", getattr(args, "max_drop", None)),
            ("--min-sqnr", getattr(args, "min_sqnr", None)),
        )
        if value is not None
    ]
    if ignored:
        raise IntqError(
            f"{args.model} is already quantized (QDQ/QOperator nodes, pt2e quantize/"
            f"dequantize): its own scales are used; drop {', '.join(ignored)}"
        )


def _prequantized_module(args, spec, shapes):
    """A model quantized already: its own scales. Quantization flags would be ignored, so
    they are refused; ``--eval`` measures the integer program against the model computed in
    float (its QDQ form), and ``--report`` writes what the report can say without a float
    model of ours."""
    from tvm_intq import api
    from tvm_intq.evaluation.evaluate import evaluate_prequantized
    from tvm_intq.frontends.prequantized import prequantized_modules
    from tvm_intq.relay_passes import float_ops
    from tvm_intq.relay_passes.check_integer import check_integer_only

    check_prequantized_flags(args)
    qdq, module, info = prequantized_modules(args.model, shapes)
    if args.integer_only:
        check_integer_only(module)
    left = float_ops(module)
    print(
        "pre-quantized model, its own scales and zero points kept: "
        + ("integer only" if not left else f"float ops left: {'; '.join(left)}")
    )
    report_path = getattr(args, "report", None)
    if qdq is None and args.eval_data:
        raise IntqError(
            f"{args.model}: --eval measures the integer program against the model's QDQ form, "
            "which a pt2e .pt2 model is not imported through; compare with torch instead"
        )
    if report_path or args.eval_data:
        samples = api.load_samples(args.eval_data, info, "--eval") if args.eval_data else None
        report = evaluate_prequantized(qdq, module, samples, progress=not args.no_progress)
        report.update(
            model=str(args.model),
            target=spec.name,
            scheme="pre-quantized",
            calibrator=None,
        )
        print(summary(report))
        if report_path:
            json_path, png = write_report(report, report_path)
            print(f"report: {json_path} and {png}")
    return module, info, "int8"


def progress_line(line: str) -> None:
    """A search's line per candidate, on stderr (results go to stdout)."""
    print(line, file=sys.stderr, flush=True)


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
    dbs = [D.open_database(f, create=False) for f in folders]
    db = D.union_of(dbs)
    tuned, missing = D.coverage(db, tasks, target)
    # Records match by workload, whatever model they were tuned on: each database's share.
    each = [len(D.coverage(d, tasks, target)[0]) for d in dbs]
    print(
        f"tuned kernels: {len(tuned)} of {len(tasks)} (databases: "
        + ", ".join(f"{f} {n}" for f, n in zip(folders, each))
        + ")"
    )
    if missing:  # the names run to kilobytes on a real model: one line, names with -v
        print(
            f"no tuned record for {len(missing)} kernel(s), default schedules used"
            + (": " + ", ".join(missing) if getattr(args, "verbose", False) else " (-v names them)")
        )
    return db
