"""``tvm-intq tune`` and ``tvm-intq inspect``, and the tuning database of ``compile``.

    tvm-intq tune model.onnx --calib calib.npz --target host --trials 64 --db tuned/
    tvm-intq tune model.onnx --calib calib.npz --target host --minutes 10 --db tuned/
    tvm-intq tune model.onnx --calib calib.npz --target aarch64 --trials 64 --db tuned-a76/ \
        --tracker 127.0.0.1:9190 --key rk3588        (measured on every board under the key)
    tvm-intq compile model.onnx --calib calib.npz --db tuned/ -o model.so
    tvm-intq inspect model.so

``tune`` builds the same integer program ``compile`` builds from the same arguments, and tunes
its kernels (:mod:`tvm_intq.schedules.tune`); ``compile`` applies ``--db`` (default: the
databases shipped for the target) and says which kernels have no tuned record.
"""

from __future__ import annotations

from tvm_intq.cli.args import (
    add_data_args,
    add_hybrid_args,
    add_model_args,
    add_quant_args,
    quantized_module,
)
from tvm_intq.cli.checks import (
    check_data_args,
    check_fp32,
    check_input_file,
    check_model_file,
    check_number,
    check_output_file,
    check_output_folder,
    check_quant_args,
    model_inputs,
)
from tvm_intq.errors import IntqError
from tvm_intq.targets.mca import COSTS


def add_parsers(sub) -> None:

    t = sub.add_parser(
        "tune", help="tune the kernels of a model with MetaSchedule into a resumable database"
    )
    add_model_args(t)
    add_data_args(t)
    add_quant_args(t)
    add_hybrid_args(t)
    t.add_argument("--fp32", action="store_true", help="tune the float model instead")
    budget = t.add_argument_group("budget (one of them, or both: --trials then caps each kernel)")
    budget.add_argument(
        "--trials",
        type=int,
        default=None,
        help="measured candidates per kernel (tasks already holding that many records are skipped)",
    )
    budget.add_argument(
        "--minutes",
        type=float,
        default=None,
        metavar="N",
        help="wall-clock minutes of tuning in all, spent where the model's time is (each "
        "kernel's measured share of a call); the minutes spent are kept in the database, so "
        "the same command resumes after a Ctrl-C and a larger N continues",
    )
    t.add_argument(
        "--db",
        required=True,
        metavar="PATH",
        help="database folder: created, or resumed (Ctrl-C and run again to continue)",
    )
    t.add_argument(
        "--trials-per-iter",
        type=int,
        default=None,
        help="candidates measured per search round (default: min(32, --trials); more than "
        "--trials is cut to --trials)",
    )
    t.add_argument("--seed", type=int, default=None)
    t.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="host only: threads the candidates run with, as the tuned model will "
        "(default: TVM's, every core; a kernel fastest on 2 threads may not be "
        "on 1)",
    )
    r = t.add_argument_group("measuring on boards (targets other than host)")
    r.add_argument(
        "--tracker", metavar="HOST:PORT", help="RPC tracker the boards are registered with"
    )
    r.add_argument("--key", help="RPC key of the boards; every board under it measures")
    r.add_argument(
        "--wait",
        type=float,
        metavar="S",
        help="with --tracker: seconds a candidate may wait for a free board (default 120)",
    )
    r.add_argument(
        "--cost",
        choices=("time",) + COSTS,
        default="time",
        help="what ranks candidates: wall time on the boards (default), or for an "
        "emulated board (--key aarch64-emu, ...) a deterministic cost: "
        "instructions executed, or llvm-mca cycles on --core",
    )
    r.add_argument(
        "--core",
        help="llvm-mca core for --cost mca (default: the big core of "
        "the architecture, e.g. neoverse-n1)",
    )
    t.add_argument(
        "--prune",
        action="store_true",
        help="afterwards, drop the records of kernels the model no longer builds "
        "(older versions of its kernels)",
    )
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(report=None)

    i = sub.add_parser(
        "inspect",
        help="count the instructions that matter (vpdpbusd, zmm, sdot, "
        "...) per kernel of a compiled library",
    )
    i.add_argument("library")


def cmd_tune(args) -> int:
    from tvm_intq.targets import get_target

    spec = get_target(args.target)
    check_model_file(args.model)
    check_data_args(args)
    check_quant_args(args)
    check_fp32(args)
    if args.trials is None and args.minutes is None:
        raise IntqError("tune needs a budget: --trials N (per kernel) or --minutes N (in all)")
    if args.trials is not None and args.trials < 1:
        raise IntqError(f"--trials {args.trials}: must be at least 1")
    if args.minutes is not None:
        check_number(args.minutes, "--minutes", 0, low_open=True)
    if args.trials_per_iter is not None and args.trials_per_iter < 1:
        raise IntqError(f"--trials-per-iter {args.trials_per_iter}: must be at least 1")
    if args.seed is not None and args.seed < 0:
        raise IntqError(f"--seed {args.seed}: must be >= 0")
    check_number(args.wait, "--wait", 0, low_open=True)
    if args.wait is not None and args.tracker is None:
        raise IntqError("--wait is how long a candidate waits for a board: it goes with --tracker")
    if args.threads is not None and (args.threads < 1 or args.tracker):
        raise IntqError(
            "--threads N (N >= 1) is for tuning on this machine; a board's threads are its own"
        )
    db = check_output_folder(args.db, "--db", model_inputs(args))
    if db.is_dir():
        for name in ("database_workload.json", "database_tuning_record.json", "tasks.json"):
            check_output_file(db / name, "--db", model_inputs(args))
    runner = _board_runner(args, spec)

    from tvm_intq.schedules.tune import summary, tune

    try:
        module, _, precision = quantized_module(args, spec)
        where = (
            runner.label
            if args.cost != "time"
            else f"wall time on the boards under '{args.key}'"
            if runner
            else "wall time on this machine"
        )
        print(f"tuning the {precision} kernels into {args.db}, measured by {where}")
        results = tune(
            module,
            spec,
            args.db,
            args.trials,
            minutes=args.minutes,
            trials_per_iter=args.trials_per_iter,
            seed=args.seed,
            progress=not args.no_progress,
            runner=runner,
            threads=args.threads,
        )
    except KeyboardInterrupt:
        print(f"stopped: {args.db} keeps every record measured so far; the same command resumes")
        raise
    finally:
        if runner is not None:
            runner.shutdown()
    print("\n".join(summary(results)))
    if args.prune:
        from tvm_intq.schedules import database as D

        dropped = D.prune(args.db, D.extract_tasks(module, spec.target(), spec.int8_dot))
        print(f"pruned {dropped} records of kernels the model no longer builds")
    print(f"database: {args.db} (apply it with: tvm-intq compile ... --db {args.db})")
    return 0


def _board_runner(args, spec):
    """The runner for ``--tracker/--key/--cost`` (checked before anything is compiled), or
    None for wall time on this machine."""
    if args.core and args.cost != "mca":
        raise IntqError("--core goes with --cost mca")
    if args.cost != "time":
        return _cost_runner(args, spec)
    if (args.tracker is None) != (args.key is None):
        raise IntqError("--tracker and --key go together (the boards to measure on)")
    if args.tracker is None:
        if not spec.is_host:
            raise IntqError(
                f"kernels for target {spec.name!r} run on a board: pass --tracker "
                "HOST:PORT --key KEY of the boards to measure on"
            )
        return None
    from tvm_intq.schedules.tune.runners import BoardsRunner
    from tvm_intq.targets.rpc import check_target_for_key

    check_target_for_key(spec, args.key)
    return BoardsRunner(args.tracker, args.key, wait=120.0 if args.wait is None else args.wait)


def _cost_runner(args, spec):
    """``--cost instructions|mca``: counted on this machine under the emulator of the board
    kind ``--key`` names, with that board's runtime (a tracker is not needed)."""
    from tvm_intq.schedules.tune.runners import CostRunner
    from tvm_intq.targets.boards import board_for_key
    from tvm_intq.targets.rpc import check_target_for_key

    board = board_for_key(args.key) if args.key else None
    if board is None or not board.emulated:
        raise IntqError(
            f"--cost {args.cost} is counted on an emulated board: pass --key with "
            "one (aarch64-emu, riscv64-emu, ...; see tvm-intq boards)"
        )
    check_target_for_key(spec, args.key)
    return CostRunner(board, args.cost, args.core)


def cmd_inspect(args) -> int:
    from tvm_intq.reports.files import table
    from tvm_intq.targets.disassembly import inspect_library

    check_input_file(args.library, "", "library")

    result = inspect_library(args.library)
    columns = [
        c
        for c in result["columns"]
        if c == "total" or any(k[c] for k in result["kernels"].values())
    ]
    rows = [{"kernel": name, **counts} for name, counts in result["kernels"].items()]
    print(f"{args.library}: {result['architecture']}, {len(rows)} kernels")
    print(table(rows, ["kernel"] + columns))
    return 0


COMMANDS = {"tune": cmd_tune, "inspect": cmd_inspect}
