"""The board verbs of the command line: ``boards``, ``tracker``, ``board up``, ``bench``.

Kept apart from :mod:`tvm_intq.cli` (which only registers them) so the CLI stays thin; the
work is in :mod:`tvm_intq.targets.rpc` and :mod:`tvm_intq.deploy.board_bench`.
"""

from __future__ import annotations

import signal
import sys
import time

from tvm_intq.cli.args import add_compile_args
from tvm_intq.errors import IntqError


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
    s.add_argument("--tracker", default="127.0.0.1:9190", help="HOST:PORT of the tracker")
    s.add_argument(
        "--key",
        help="RPC key of the boards; without it, deterministic figures on the "
        "emulated board of --target (aarch64, riscv64), int8 vs fp32: "
        "qemu instructions executed and llvm-mca cycle estimates",
    )
    s.add_argument(
        "--fp32", action="store_true", help="also bench the float model (int8/fp32 ratio)"
    )
    s.add_argument("--repeat", type=int, default=10, help="timed measurements (default 10)")
    s.add_argument("--number", type=int, default=1, help="calls per measurement (default 1)")
    s.add_argument("--warmup", type=int, default=1, help="untimed calls first (default 1)")
    s.add_argument("--check-samples", type=int, default=4, help="samples whose outputs are checked")
    s.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a free board")
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

    def ready(host, port):
        print(f"tracker listening on {host}:{port} (Ctrl-C stops it)", flush=True)

    serve_tracker(args.host, args.port, on_ready=ready)
    return 0


def cmd_board(args) -> int:
    from tvm_intq.targets.boards import get_board
    from tvm_intq.targets.rpc import start_boards

    if args.count < 1:
        raise IntqError("--count must be >= 1")
    board = get_board(args.board)
    started = start_boards(
        board, args.tracker, args.count, args.host, args.log_dir, custom_addr=args.custom_addr
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


def cmd_bench(args) -> int:
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
