"""What every verb checks before its work starts (and before TVM is loaded): the files it
reads exist, the files it writes can be written and are none of its inputs, numeric flags are
in range, and flags that cannot go together are refused, each in one line naming the flag.

A flag that would be accepted and then ignored is refused too: the user meant something by
it, and a run that silently does something else is worse than a clear "no".
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from tvm_intq.errors import IntqError
from tvm_intq.files import check_input_file, check_output_file, check_output_folder

__all__ = [
    "check_input_file",
    "check_output_file",
    "check_output_folder",
    "check_data_args",
    "check_model_file",
    "check_number",
    "check_quant_args",
    "check_fp32",
    "model_inputs",
    "note",
]


def check_number(value, flag: str, low=None, high=None, *, low_open=False, integer=False):
    """``value`` (None: not given) is finite and within ``[low, high]`` (``(low, high]`` with
    ``low_open``)."""
    if value is None:
        return
    if not math.isfinite(value):
        raise IntqError(f"{flag} {value}: must be a finite number")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and value > high
    if below or above:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"<= {high:g}"
        rng = " and ".join(p for p in (lo, hi) if p)
        raise IntqError(f"{flag} {value:g}: must be {rng}")


def check_model_file(path) -> Path:
    return check_input_file(path, "", "model file")


def check_data_args(args) -> None:
    """``--calib`` (an .npz or an image folder) and ``--eval`` exist."""
    calib = getattr(args, "calib", None)
    if calib:
        p = Path(calib)
        if not p.exists():
            raise IntqError(f"--calib {p}: no such file or folder")
        if not p.is_dir():
            check_input_file(p, "--calib", "calibration file")
    if getattr(args, "eval_data", None):
        check_input_file(args.eval_data, "--eval", "evaluation file")
    folder = calib and Path(calib).is_dir()
    if not folder:
        for flag in ("mean", "std", "scale", "layout", "channel_order"):
            if getattr(args, flag, None) is not None:
                raise IntqError(
                    f"--{flag.replace('_', '-')} is the preprocessing of an image folder; "
                    f"--calib {calib or '(not given)'} is not a folder"
                )
    for flag in ("mean", "std"):
        for v in getattr(args, flag, None) or ():
            check_number(v, f"--{flag}")
    if getattr(args, "std", None) and any(v <= 0 for v in args.std):
        raise IntqError("--std: every value must be > 0 (pixels are divided by it)")
    check_number(getattr(args, "scale", None), "--scale", 0, low_open=True)


def check_quant_args(args) -> None:
    """Scheme, calibrator and hybrid-precision flags: ranges and combinations."""
    percentile = getattr(args, "percentile", None)
    if percentile is not None:
        check_number(percentile, "--percentile", 0, 100, low_open=True)
        if (args.calibrator or "percentile") != "percentile":
            raise IntqError(
                f"--percentile goes with --calibrator percentile, not --calibrator "
                f"{args.calibrator} (it would be ignored)"
            )
    if not hasattr(args, "float_layers"):
        return
    check_number(args.max_drop, "--max-drop", 0, 100)
    check_number(args.min_sqnr, "--min-sqnr")
    auto = (args.float_layers or "").strip().lower() == "auto"
    for flag in ("max_drop", "min_sqnr"):
        if getattr(args, flag) is not None and not auto:
            raise IntqError(
                f"--{flag.replace('_', '-')} is the target of --float-layers auto "
                "(it would be ignored without it)"
            )
    if auto and args.max_drop is None and args.min_sqnr is None:
        raise IntqError(
            "--float-layers auto needs a target: --max-drop POINTS (the evaluation data "
            "must hold labels) or --min-sqnr DB"
        )
    if args.float_layers is not None and not args.float_layers.strip():
        raise IntqError("--float-layers: empty; give 'auto' or layer names")


def model_inputs(args) -> list[tuple[str, str | None]]:
    """The files a model verb reads, to keep its outputs off them."""
    return [
        ("model", getattr(args, "model", None)),
        ("--calib file", getattr(args, "calib", None)),
        ("--eval file", getattr(args, "eval_data", None)),
    ]


def check_fp32(args) -> None:
    """``--fp32`` builds the float model: a quantization flag would be ignored, so it is
    refused; calibration data is harmless (the same command line with and without --fp32
    compares the two builds), and a note says it is not used."""
    if not getattr(args, "fp32", False):
        return
    given = [
        flag
        for flag, value in (
            ("--calibrator", args.calibrator),
            ("--percentile", args.percentile),
            ("--scheme", None if args.scheme == "hybrid-asym" else args.scheme),
            ("--integer-only", args.integer_only or None),
            ("--float-layers", getattr(args, "float_layers", None)),
            ("--max-drop", getattr(args, "max_drop", None)),
            ("--min-sqnr", getattr(args, "min_sqnr", None)),
            ("--report", getattr(args, "report", None)),
        )
        if value is not None
    ]
    if given:
        raise IntqError(
            f"--fp32 builds the float model without quantizing it: {', '.join(given)} "
            f"would be ignored; drop --fp32 or {' '.join(given)}"
        )
    data = [f for f, v in (("--calib", args.calib), ("--eval", args.eval_data)) if v]
    if data:
        note(f"--fp32: {' and '.join(data)} not used (the float model needs no calibration)")


def note(text: str) -> None:
    """One line on stderr that does not stop the verb (a flag that does not apply)."""
    print(f"tvm-intq: note: {text}", file=sys.stderr, flush=True)
