"""The board verbs of the command line: ``boards``, ``tracker``, ``board up``, ``bench``.

Kept apart from :mod:`tvm_intq.cli` (which only registers them) so the CLI stays thin; the
work is in :mod:`tvm_intq.targets.rpc` and :mod:`tvm_intq.deploy.board_bench`.
"""

from __future__ import annotations

import signal
import sys
import time

from tvm_intq.cli.args import add_compile_args, check_db_args
from tvm_intq.cli.checks import (
    check_input_file,
    check_model_file,
    check_number,
    check_output_file,
    check_output_folder,
    note,
)
from tvm_intq.errors import IntqError

MAX_BOARDS = 64  # emulated boards per `board up` (each is a qemu process per session)
#: bench's flags for timing on boards (--key), and their defaults.
BENCH_DEFAULTS = {
    "tracker": "127.0.0.1:9190",
    "repeat": 10,
    "number": 1,
    "warmup": 1,
    "check_samples": 4,
    "timeout": 120.0,
}


def add_parsers(sub) -> None:
    sub.add_parser("boards", help="list the board kinds (targets/boards/*.py)")

    t = sub.add_parser("tracker", help="run TVM's RPC tracker (boards register with it)")
    t.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    t.add_argument("--port", type=int, default=9190)

    b = sub.add_parser("board", help="start emulated boards: board up aarch64-emu|riscv64-emu")
    b.add_argument("action", choices=["up"])
    b.add_argument("board", help="an emulated board kind (see `tvm-intq boards`)")
    b.add_argument("--tracker", default="127.0.0.1:9190", help="HOST:PORT of the tracker")
    b.add_argument("--count", type=int, default=1, help="how many boards of this kind")
    b.add_argument(
        "--host", default="127.0.0.1", help="address the boards listen on (default 127.0.0.1)"
    )
    b.add_argument(
        "--custom-addr",
        help="address the tracker gives clients for these boards "
        "(default: the address it sees them at)",
    )
    b.add_argument("--log-dir", help="write each board's log here")
    b.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to wait for the tracker if it does not listen yet (default 60)",
    )

    s = sub.add_parser(
        "bench",
        help="compile, run on a board through the tracker, check outputs, "
        "time; without --key: instruction counts and llvm-mca cycles "
        "on the emulated board",
    )
    s.add_argument("model", help="float ONNX or .tflite model")
    s.add_argument(
        "--calib", required=True, help=".npz calibration data (first samples also check outputs)"
    )
    s.add_argument(
        "--target", required=True, help="target the boards under --key run (aarch64, riscv64, ...)"
    )
    s.add_argument("--tracker", help="HOST:PORT of the tracker (default 127.0.0.1:9190)")
    s.add_argument(
        "--key",
        help="RPC key of the boards; without it, deterministic figures on the "
        "emulated board of --target (aarch64, riscv64), int8 vs fp32: "
        "qemu instructions executed and llvm-mca cycle estimates",
    )
    s.add_argument(
        "--fp32", action="store_true", help="also bench the float model (int8/fp32 ratio)"
    )
    g = s.add_argument_group("timing on the boards (with --key)")
    g.add_argument("--repeat", type=int, help="timed measurements (default 10)")
    g.add_argument("--number", type=int, help="calls per measurement (default 1)")
    g.add_argument("--warmup", type=int, help="untimed calls first (default 1)")
    g.add_argument(
        "--check-samples", type=int, help="samples whose outputs are checked (default 4)"
    )
    g.add_argument("--timeout", type=float, help="seconds to wait for a free board (default 120)")
    s.add_argument("--input-shape", action="append", metavar="NAME:D1xD2x...")
    s.add_argument("--out", help="folder for the libraries (default: a temporary one)")
    s.add_argument("--json", help="write the result as JSON")
    s.add_argument(
        "--peers",
        action="store_true",
        help="without --key, aarch64 targets: also ONNX Runtime and LiteRT int8/fp32 on the "
        "same emulated core, counted the same way (a peer that cannot load the model's "
        "format is left out with a note)",
    )
    s.add_argument(
        "--peer-model",
        action="append",
        metavar="NAME=FILE",
        help="the model a peer runs (NAME: onnxruntime-int8, onnxruntime-fp32, litert-int8, "
        "litert-fp32), e.g. a .tflite version of an ONNX model; repeatable",
    )
    add_compile_args(s)


def cmd_boards(args) -> int:
    from tvm_intq.reports.speed import boards_table
    from tvm_intq.targets.boards import BOARDS

    rows = []
    for b in BOARDS.values():
        if b.emulated:
            status = "built" if b.is_built() else "not built (make boards)"
            kind = f"emulated ({b.emulator.qemu})"
        else:
            status = (
                f"on the board: python -m tvm.exec.rpc_server --tracker HOST:PORT --key {b.key}"
            )
            kind = "real"
        rows.append(
            {"board": b.name, "key": b.key, "target": b.target, "kind": kind, "status": status}
        )
    print(boards_table(rows))
    return 0


def cmd_tracker(args) -> int:
    from tvm_intq.targets.rpc import serve_tracker

    if not 0 < args.port < 65536:
        raise IntqError(f"--port {args.port}: a TCP port is 1..65535")

    def ready(host, port):
        print(f"tracker listening on {host}:{port} (Ctrl-C stops it)", flush=True)

    serve_tracker(args.host, args.port, on_ready=ready)
    return 0


def cmd_board(args) -> int:
    from tvm_intq.targets.boards import get_board
    from tvm_intq.targets.rpc import parse_addr, start_boards

    if not 1 <= args.count <= MAX_BOARDS:
        raise IntqError(f"--count {args.count}: must be 1..{MAX_BOARDS}")
    check_number(args.wait, "--wait", 0)
    parse_addr(args.tracker)
    if args.log_dir:
        check_output_folder(args.log_dir, "--log-dir")
    board = get_board(args.board)

    def waiting(text):
        print(text, flush=True)

    started = start_boards(
        board,
        args.tracker,
        args.count,
        args.host,
        args.log_dir,
        custom_addr=args.custom_addr,
        wait=args.wait,
        on_wait=waiting,
    )
    for bp in started:
        print(
            f"board {bp.name} up: key '{board.key}', pid {bp.pid}, "
            f"listening on {bp.host}:{bp.port}",
            flush=True,
        )
    print(f"{len(started)} board(s) registered with {args.tracker} (Ctrl-C stops them)", flush=True)

    def stop(*_):
        for bp in started:
            bp.kill(signal.SIGTERM)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while True:
            for bp in list(started):
                if bp.proc.poll() is not None:
                    print(
                        f"board {bp.name} exited ({bp.proc.returncode})",
                        file=sys.stderr,
                        flush=True,
                    )
                    started.remove(bp)
            if not started:
                raise IntqError("every board exited")
            time.sleep(1.0)
    finally:
        for bp in started:
            bp.kill(signal.SIGTERM)


def check_bench(args) -> None:
    """What ``bench`` reads and writes, and its numbers, before anything is compiled."""
    from tvm_intq.targets import get_target

    check_model_file(args.model)
    check_input_file(args.calib, "--calib", "calibration file")
    check_db_args(args)
    get_target(args.target)
    board_only = [f for f in BENCH_DEFAULTS if getattr(args, f) is not None]
    if args.key is None and board_only:
        flags = ", ".join("--" + f.replace("_", "-") for f in board_only)
        raise IntqError(
            f"{flags} time a bench on boards (--key); without --key the emulated figures "
            "count instructions and cycles, and would ignore it"
        )
    for flag, value in BENCH_DEFAULTS.items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)
    for flag, low in (("repeat", 1), ("number", 1), ("warmup", 0), ("check_samples", 1)):
        value = getattr(args, flag)
        if value < low:
            raise IntqError(f"--{flag.replace('_', '-')} {value}: must be >= {low}")
    check_number(args.timeout, "--timeout", 0, low_open=True)
    reads = [("model", args.model), ("--calib file", args.calib)]
    if args.out:
        check_output_folder(args.out, "--out", reads)
    if args.json:
        check_output_file(args.json, "--json", reads, create_folder=True)
    if args.key is None and args.fp32:
        note("--fp32: without --key the emulated figures compare int8 and fp32 anyway")


def cmd_bench(args) -> int:
    check_bench(args)

    from tvm_intq import api
    from tvm_intq.deploy.board_bench import BenchStopped, bench
    from tvm_intq.frontends import import_model, parse_input_shapes
    from tvm_intq.reports.files import write_json
    from tvm_intq.reports.speed import bench_table, emulated_markdown

    shapes = parse_input_shapes(args.input_shape)
    _, info = import_model(args.model, shapes)
    calib = api.load_samples(args.calib, info, "--calib")

    # As compile: --db folders, none with --no-db, None = the databases shipped for the target.
    databases = [] if args.no_db else args.db
    if args.key is None:
        from tvm_intq.deploy.emulated_figures import bench_emulated
        from tvm_intq.deploy.peer_bench import parse_peer_models
        from tvm_intq.reports.speed import peers_markdown

        result = bench_emulated(
            args.model,
            calib,
            args.target,
            input_shapes=shapes,
            out_dir=args.out,
            databases=databases,
            peers=args.peers,
            peer_models=parse_peer_models(args.peer_model),
            on_event=lambda msg: print(f"  {msg}", file=sys.stderr, flush=True),
        )
        print(emulated_markdown(result))
        if args.peers:
            print()
            print(peers_markdown(result))
        if args.json:
            write_json(result, args.json)
        return 0

    if args.peers or args.peer_model:
        raise IntqError("--peers counts instructions on the emulated core: use it without --key")

    def event(msg):
        print(f"  {msg}", file=sys.stderr, flush=True)

    try:
        result = bench(
            args.model,
            calib,
            args.target,
            args.tracker,
            args.key,
            fp32=args.fp32,
            repeat=args.repeat,
            number=args.number,
            warmup=args.warmup,
            check_samples=args.check_samples,
            input_shapes=shapes,
            timeout=args.timeout,
            out_dir=args.out,
            databases=databases,
            on_event=event,
        )
    except BenchStopped as err:
        print(bench_table(err.result))
        if args.json:
            write_json(err.result, args.json)
        raise
    print(bench_table(result))
    if args.json:
        write_json(result, args.json)
    if result.get("error"):
        raise IntqError(result["error"])
    return 0


COMMANDS = {"boards": cmd_boards, "tracker": cmd_tracker, "board": cmd_board, "bench": cmd_bench}
