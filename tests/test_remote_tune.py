"""Tuning for boards, on the tiny two-conv model of test_tune.

By wall time through a tracker (`tvm-intq tune --target aarch64 --tracker … --key …`), with a
real tracker and emulated aarch64 boards: candidates are measured on the boards, records
persist as they arrive, a board killed mid-tune loses no record and the tune finishes on the
other; with no board left the tune stops with one line.

By a deterministic cost on an emulated board (`--cost instructions|mca`): each record holds
exactly what a counting run of its kernel gives, and a database keeps to one cost."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from test_boards import require_built
from test_insn_count import require_counting
from test_rpc import free_port, kill_group, start_tracker_cli
from test_tune import records_by_workload, tiny_model

from tvm_intq import api, cli
from tvm_intq.calibration import load_npz
from tvm_intq.errors import IntqError
from tvm_intq.evaluation.reference import run_reference
from tvm_intq.schedules import database as D
from tvm_intq.schedules.tune import tune
from tvm_intq.schedules.tune.runners import BoardsRunner
from tvm_intq.schedules.tune.workers import NOT_MEASURED, build_kernel, export_kernel
from tvm_intq.targets import get_target, rpc
from tvm_intq.targets.boards import get_board
from tvm_intq.targets.insn_count import executed_instructions

pytestmark = pytest.mark.integration
AARCH64 = get_target("aarch64")
KEY = "aarch64-emu"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    model, calib = tiny_model(folder)
    samples = load_npz(calib, {"input": (1, 3, 8, 8)})
    compiled = api.compile_onnx(model, samples, api.QuantConfig(progress=False), "host")
    return model, calib, compiled.integer


@pytest.fixture()
def arm_pair(tmp_path):
    """A tracker of its own with two emulated aarch64 boards (each test may kill them)."""
    require_built(get_board(KEY))
    port = free_port()
    proc = start_tracker_cli(port)
    started = []
    try:
        started = rpc.start_boards(
            get_board(KEY), f"127.0.0.1:{port}", 2, log_dir=str(tmp_path / "boards")
        )
        yield f"127.0.0.1:{port}", started, tmp_path / "boards"
    finally:
        for b in started:
            b.kill()
        kill_group(proc)


def valid_records(folder) -> list:
    return [
        r
        for recs in records_by_workload(folder).values()
        for r in recs
        if max(float(s) for s in r.run_secs) < 1e9
    ]


def sessions_served(log_dir, board) -> int:
    return (log_dir / f"{board.name}.log").read_text().count(": session ")


def kill_after_records(folder, boards, count: int, timeout: float = 600):
    """Kill ``boards`` once the database holds ``count`` records (a watcher thread)."""
    killed = threading.Event()

    def watch():
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                n = sum(len(v) for v in records_by_workload(folder).values())
            except Exception:  # noqa: BLE001 - the database is not created yet
                n = 0
            if n >= count:
                for b in boards:
                    b.kill()
                killed.set()
                return
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()
    return killed


def test_tune_on_boards_then_compile_is_bit_exact_on_a_board(tiny, arm_pair, tmp_path, capsys):
    model, calib, integer = tiny
    url, boards, logs = arm_pair
    db = tmp_path / "db"
    rc = cli.main(
        [
            "tune",
            str(model),
            "--calib",
            str(calib),
            "--target",
            "aarch64",
            "--trials",
            "2",
            "--trials-per-iter",
            "2",
            "--db",
            str(db),
            "--no-progress",
            "--tracker",
            url,
            "--key",
            KEY,
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"measured by wall time on the boards under '{KEY}'" in out
    # Every conv task got board-measured records (real run times, not failures).
    conv_records = [r for r in valid_records(db) if "conv2d" in str(r.workload.mod)]
    assert len(conv_records) >= 2
    assert all(0 < float(s) < 1 for r in conv_records for s in r.run_secs)
    assert all(r.target.attrs["mtriple"] == "aarch64-linux-gnu" for r in conv_records)
    # Both boards measured (two workers, one per board).
    assert all(sessions_served(logs, b) > 0 for b in boards)

    # The tuned library runs on a board and equals the numpy reference bit for bit.
    lib = tmp_path / "tuned.so"
    rc = cli.main(
        [
            "compile",
            str(model),
            "--calib",
            str(calib),
            "--target",
            "aarch64",
            "--db",
            str(db),
            "-o",
            str(lib),
        ]
    )
    assert rc == 0
    assert "tuned kernels: " in capsys.readouterr().out
    x = np.load(calib)["input"][:1]
    expected = run_reference(integer, {"input": x})
    with rpc.TrackerClient(url).request(KEY) as board:
        vm = board.load_vm(board.upload(lib))
        (got,) = board.run(vm, [x])
    np.testing.assert_array_equal(got, expected)


def test_killing_one_board_mid_tune_keeps_records_and_finishes(tiny, arm_pair, tmp_path):
    _, _, integer = tiny
    url, boards, _ = arm_pair
    db = tmp_path / "db"
    runner = BoardsRunner(url, KEY, wait=60)
    killed = kill_after_records(db, boards[:1], count=2)
    try:
        results = tune(
            integer,
            AARCH64,
            db,
            trials=4,
            trials_per_iter=2,
            progress=False,
            runner=runner,
            echo=lambda *_: None,
        )
    finally:
        runner.shutdown()
    assert killed.is_set(), "the tune ended before the first records arrived"
    assert boards[0].proc.poll() is not None and boards[1].proc.poll() is None
    # Finished on the survivor: every task reached its budget or ended its search.
    assert all(r.status in ("tuned", "search ended early") for r in results)
    convs = [r for r in results if "conv2d" in r.name]
    assert convs and all(r.records_after >= 4 and r.best_us for r in convs)
    # Nothing that died with the board was recorded as a measurement or a failure.
    records = [r for recs in records_by_workload(db).values() for r in recs]
    assert all(NOT_MEASURED not in str(r.run_secs) for r in records)
    assert rpc.TrackerClient(url).boards(KEY)["total"] == 1


def test_no_board_left_stops_the_tune_with_one_line_and_keeps_records(tiny, arm_pair, tmp_path):
    _, _, integer = tiny
    url, boards, _ = arm_pair
    db = tmp_path / "db"
    runner = BoardsRunner(url, KEY, wait=20, session_timeout=60)
    kill_after_records(db, boards, count=1)
    try:
        with pytest.raises(IntqError, match=f"no board left under key '{KEY}'.*keeps every record"):
            tune(
                integer,
                AARCH64,
                db,
                trials=8,
                trials_per_iter=2,
                progress=False,
                runner=runner,
                echo=lambda *_: None,
            )
    finally:
        runner.shutdown()
    kept = D.open_database(db, create=False).get_all_tuning_records()
    assert len(kept) >= 1


def test_tune_for_a_board_target_needs_tracker_and_key(tiny, capsys):
    model, calib, _ = tiny
    rc = cli.main(
        [
            "tune",
            str(model),
            "--calib",
            str(calib),
            "--target",
            "riscv64",
            "--trials",
            "2",
            "--db",
            "unused",
        ]
    )
    assert rc == 2
    assert "pass --tracker HOST:PORT --key KEY" in capsys.readouterr().err
    rc = cli.main(
        [
            "tune",
            str(model),
            "--calib",
            str(calib),
            "--target",
            "riscv64",
            "--trials",
            "2",
            "--db",
            "unused",
            "--tracker",
            "127.0.0.1:9",
        ]
    )
    assert rc == 2
    assert "--tracker and --key go together" in capsys.readouterr().err


def test_tune_refuses_a_key_whose_boards_run_another_architecture(tiny, capsys):
    model, calib, _ = tiny
    rc = cli.main(
        [
            "tune",
            str(model),
            "--calib",
            str(calib),
            "--target",
            "riscv64",
            "--trials",
            "2",
            "--db",
            "unused",
            "--tracker",
            "127.0.0.1:9",
            "--key",
            KEY,
        ]
    )
    assert rc == 2
    assert "use --target aarch64" in capsys.readouterr().err


# ---------------------------------------------------------------- deterministic costs


def rebuilt(record) -> str:
    """The kernel of a tuning record, rebuilt and cross-linked as the tune's builder does."""
    from tvm import s_tir

    sch = s_tir.Schedule(record.workload.mod)
    record.trace.apply_to_schedule(sch, remove_postproc=False)
    return export_kernel("aarch64", build_kernel(sch.mod, AARCH64.target(), None))


def test_tune_by_instructions_records_what_the_board_counts(tiny, tmp_path, capsys):
    model, calib, _ = tiny
    board = get_board(KEY)
    require_counting(board)
    db = tmp_path / "db"
    rc = cli.main(
        [
            "tune",
            str(model),
            "--calib",
            str(calib),
            "--target",
            "aarch64",
            "--trials",
            "2",
            "--trials-per-iter",
            "2",
            "--db",
            str(db),
            "--no-progress",
            "--key",
            KEY,
            "--cost",
            "instructions",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "measured by instructions executed on emulated board aarch64-emu" in out
    assert (db / D.COST).read_text().startswith("instructions executed on emulated board")
    conv = next(r for r in valid_records(db) if "conv2d_packed" in str(r.workload.mod))
    # The recorded cost is the instruction count of that very kernel, to the instruction.
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    from tvm_intq.schedules.tune.workers import candidate_input

    rng = np.random.default_rng(0)
    args = [
        candidate_input(shape, dtype, rng)
        for _, dtype, shape in (
            a.as_json() for a in ArgInfo.from_prim_func(conv.workload.mod["main"])
        )
    ]
    count = executed_instructions(rebuilt(conv), board, args)
    assert float(conv.run_secs[0]) == pytest.approx(count * 1e-9, rel=0, abs=1e-15)

    # A database keeps to one cost: wall-time records cannot join it.
    with pytest.raises(IntqError, match="holds records of instructions executed.*another --db"):
        D.check_cost(db, D.WALL_TIME)


def test_tune_by_mca_cycles_on_a_named_core(tiny, tmp_path, capsys):
    model, calib, _ = tiny
    require_counting(get_board(KEY))
    db = tmp_path / "db"
    rc = cli.main(
        [
            "tune",
            str(model),
            "--calib",
            str(calib),
            "--target",
            "aarch64",
            "--trials",
            "1",
            "--db",
            str(db),
            "--no-progress",
            "--key",
            KEY,
            "--cost",
            "mca",
            "--core",
            "cortex-a55",
        ]
    )
    assert rc == 0, capsys.readouterr().out
    assert (db / D.COST).read_text().startswith("llvm-mca cycles on cortex-a55")
    assert any("conv2d_packed" in str(r.workload.mod) for r in valid_records(db))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--key", "rk3588", "--cost", "instructions"], "counted on an emulated board"),
        (
            ["--key", KEY, "--cost", "mca", "--core", "cortex-x9"],
            "--core cortex-x9: llvm-mca cores",
        ),
        (["--key", KEY, "--core", "cortex-a55"], "--core goes with --cost mca"),
        (
            ["--tracker", "127.0.0.1:9", "--key", KEY, "--threads", "1"],
            "a board's threads are its own",
        ),
        (["--threads", "0"], "--threads N (N >= 1)"),
    ],
)
def test_cost_options_are_checked_before_compiling(tiny, capsys, extra, message):
    model, calib, _ = tiny
    rc = cli.main(
        [
            "tune",
            str(model),
            "--calib",
            str(calib),
            "--target",
            "aarch64",
            "--trials",
            "2",
            "--db",
            "unused",
            *extra,
        ]
    )
    assert rc == 2
    assert message in capsys.readouterr().err
