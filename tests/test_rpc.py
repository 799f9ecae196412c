"""The RPC harness with real processes: TVM's tracker (`tvm-intq tracker`), emulated ARM64 and
RISC-V64 boards under qemu (`make boards` builds them), the bundled int8 model benched on both
through the tracker, bit-exact against the numpy reference; faults (a board killed mid-bench,
no tracker, a busy board, a library for the wrong architecture); loopback-only servers.

Every process a test starts is in a process group of its own and killed by its fixture's
finalizer; the boards also die with the pytest process (parent-death signal)."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest
from test_boards import require_built

from tvm_intq import api
from tvm_intq.cli import main
from tvm_intq.demo import bundled
from tvm_intq.deploy.board_bench import EMULATED_NOTE, bench, plan_bench, run
from tvm_intq.errors import IntqError
from tvm_intq.frontends import import_model
from tvm_intq.targets import HOST, rpc
from tvm_intq.targets.boards import get_board

pytestmark = pytest.mark.integration

MODEL = bundled("mnist_cnn.onnx")
KEYS = {"aarch64": "aarch64-emu", "riscv64": "riscv64-emu"}


def _die_with_pytest():  # preexec_fn: SIGTERM when pytest dies, however it dies
    rpc.set_parent_death_signal(signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


_LINES: dict = {}


def wait_line(proc: subprocess.Popen, needle: str, timeout: float = 120) -> str:
    """Read ``proc``'s stdout until a line containing ``needle`` (fail on exit or timeout)."""
    if proc.pid not in _LINES:
        lines: queue.Queue = queue.Queue()

        def pump():
            for raw in iter(proc.stdout.readline, b""):
                lines.put(raw.decode(errors="replace").rstrip())

        threading.Thread(target=pump, daemon=True).start()
        _LINES[proc.pid] = lines
    lines = _LINES[proc.pid]
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None and lines.empty():
                break
            continue
        seen.append(line)
        if needle in line:
            return line
    pytest.fail(f"no line with {needle!r} from {proc.args}: {seen}")


def wait_for(cond, timeout: float = 30, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def start_tracker_cli(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvm_intq.cli", "tracker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_pytest,
    )
    try:
        wait_line(proc, "tracker listening on 127.0.0.1:")
    except BaseException:
        kill_group(proc)
        raise
    return proc


@pytest.fixture(scope="module")
def data():
    _, info = import_model(MODEL)
    return api.load_samples(bundled("calib.npz"), info, "calib")


@pytest.fixture(scope="module")
def plans(data, tmp_path_factory):
    """The bundled model quantized and built (int8 and fp32) per target, once per module."""
    cache = {}

    def get(target):
        if target not in cache:
            cache[target] = plan_bench(
                MODEL,
                data,
                target,
                fp32=True,
                check_samples=3,
                out_dir=tmp_path_factory.mktemp(f"plan-{target}"),
            )
        return cache[target]

    return get


@pytest.fixture(scope="module")
def tracker():
    """`tvm-intq tracker` on a free port (a process group of its own)."""
    port = free_port()
    proc = start_tracker_cli(port)
    yield f"127.0.0.1:{port}", proc
    kill_group(proc)


@pytest.fixture(scope="module")
def boards(tracker, tmp_path_factory):
    """One emulated board of each kind, registered with the tracker."""
    for kind in KEYS.values():
        require_built(get_board(kind))
    logs = tmp_path_factory.mktemp("board-logs")
    started = []
    try:
        for kind in KEYS.values():
            started += rpc.start_boards(get_board(kind), tracker[0], 1, log_dir=str(logs))
        yield started
    finally:
        for b in started:
            b.kill()


def check_bench_result(result: dict, key: str, repeat: int):
    assert result["key"] == key and result["emulated"] is True
    assert result["note"] == EMULATED_NOTE and "not of any hardware" in result["note"]
    for precision in ("int8", "fp32"):
        r = result["results"][precision]
        assert r["outputs_match"], f"{precision}: outputs differ ({r['max_abs_diff']})"
        assert r["emulated"] is True and r["outputs_checked"] >= 1
        assert len(r["samples_ms"]) == repeat
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
    assert result["results"]["int8"]["max_abs_diff"] == 0.0
    assert result["ratio_int8_over_fp32"] == pytest.approx(
        result["results"]["int8"]["p50_ms"] / result["results"]["fp32"]["p50_ms"]
    )
    assert "error" not in result


# ---------------------------------------------------------------- the bundled model on both boards


@pytest.mark.parametrize("target", ["aarch64", "riscv64"])
def test_bench_bundled_int8_model_on_emulated_board(target, tracker, boards, plans):
    events = []
    result = run(plans(target), tracker[0], KEYS[target], repeat=3, on_event=events.append)
    check_bench_result(result, KEYS[target], repeat=3)
    assert result["results"]["int8"]["check"].startswith("bit-exact")
    assert not result["boards_lost"]
    ports = {f"127.0.0.1:{b.port}" for b in boards}
    assert result["results"]["int8"]["board"] in ports
    assert any(e.startswith("int8: running on board") for e in events)


@pytest.mark.parametrize("target", ["aarch64", "riscv64"])
def test_shipped_database_kernels_are_bit_exact_on_the_board(
    target, tracker, boards, data, tmp_path
):
    """The database shipped for each board target (tuned by llvm-mca cycles) covers the bundled
    model, and its tuned kernels compute exactly what the numpy reference does, on the board."""
    import numpy as np

    from tvm_intq.evaluation.reference import run_reference
    from tvm_intq.schedules import database as D
    from tvm_intq.targets import get_target

    spec = get_target(target)
    compiled = api.compile_onnx(MODEL, data, api.QuantConfig(progress=False), target)
    folders = D.shipped_databases(target)
    assert [f.parent.name + "/" + f.name for f in folders] == [
        f"{target}/mnist_cnn",
        f"{target}/mnist_cnn_fp32",
    ]
    db = D.union(folders)
    tasks = D.extract_tasks(compiled.integer, spec.target(), spec.int8_dot)
    tuned, missing = D.coverage(db, tasks, spec.target())
    assert missing == [] and len(tuned) == len(tasks) > 0
    lib = tmp_path / "m.so"
    spec.export(api.build(compiled.integer, spec, database=db), lib)
    x = np.load(bundled("heldout.npz"))["input"][:2]
    with rpc.TrackerClient(tracker[0]).request(KEYS[target]) as board:
        vm = board.load_vm(board.upload(lib))
        for i in range(len(x)):
            (got,) = board.run(vm, [x[i : i + 1]])
            np.testing.assert_array_equal(
                got, run_reference(compiled.integer, {"input": x[i : i + 1]})
            )


def test_bench_command_prints_percentiles_and_emulated(tracker, boards, capsys, tmp_path):
    rc = main(
        [
            "bench",
            str(MODEL),
            "--calib",
            str(bundled("calib.npz")),
            "--target",
            "aarch64",
            "--tracker",
            tracker[0],
            "--key",
            "aarch64-emu",
            "--repeat",
            "2",
            "--check-samples",
            "1",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "EMULATED BOARD" in out and "not of any hardware" in out
    assert "p50 ms" in out and "p99 ms" in out and "match (bit-exact" in out
    assert (tmp_path / "r.json").is_file()


def test_real_board_path_with_tvms_own_rpc_server(tracker, data, tmp_path):
    """What a real board runs - TVM's `python -m tvm.exec.rpc_server --tracker ... --key K`,
    here on this machine as an x86-64 "board" - serves bench unchanged (not emulated)."""
    key = "x86-host-test"
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tvm.exec.rpc_server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--port-end",
            str(port + 1),
            "--tracker",
            tracker[0],
            "--key",
            key,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_pytest,
    )
    try:
        client = rpc.TrackerClient(tracker[0])
        wait_for(lambda: client.boards(key)["total"] == 1, 90, "TVM's rpc_server to register")
        plan = plan_bench(MODEL, data, "host", check_samples=2, out_dir=tmp_path)
        result = run(plan, tracker[0], key, repeat=3)
        assert result["emulated"] is False and result["board_kind"] is None
        r = result["results"]["int8"]
        assert r["outputs_match"] and r["max_abs_diff"] == 0.0 and len(r["samples_ms"]) == 3
    finally:
        kill_group(proc)


# ---------------------------------------------------------------- faults


@pytest.fixture(scope="module")
def two_arm_boards(tmp_path_factory):
    """A tracker of its own with two aarch64 boards, for the tests that kill boards (in file
    order: one board dies mid-bench, then the last one)."""
    require_built(get_board("aarch64-emu"))
    port = free_port()
    proc = start_tracker_cli(port)
    started = []
    try:
        started = rpc.start_boards(
            get_board("aarch64-emu"),
            f"127.0.0.1:{port}",
            2,
            log_dir=str(tmp_path_factory.mktemp("arm-pair")),
        )
        yield f"127.0.0.1:{port}", started
    finally:
        for b in started:
            b.kill()
        kill_group(proc)


def test_killing_one_of_two_boards_mid_bench_keeps_results_and_finishes(two_arm_boards, plans):
    url, started = two_arm_boards
    assert all(b.proc.poll() is None for b in started), (
        "runs before the test that kills every board"
    )
    by_port = {b.port: b for b in started}
    killed = []

    def on_event(msg):
        # Kill the board the int8 job was given, the moment it has it (fp32 runs on the other).
        if msg.startswith("int8: running on board") and not killed:
            port = int(msg.split()[4].rsplit(":", 1)[1])
            killed.append(by_port[port])
            by_port[port].kill()

    result = run(plans("aarch64"), url, "aarch64-emu", repeat=5, on_event=on_event)
    assert killed, "the int8 job never started"
    survivor = next(b for b in started if b is not killed[0])
    assert len(result["boards_lost"]) == 1 and f":{killed[0].port}" in result["boards_lost"][0]
    assert result["boards_used"] == 2
    for precision in ("int8", "fp32"):
        assert result["results"][precision]["board"] == f"127.0.0.1:{survivor.port}"
    check_bench_result(result, "aarch64-emu", repeat=5)
    assert killed[0].proc.poll() is not None
    # The tracker has forgotten the dead board.
    assert rpc.TrackerClient(url).boards("aarch64-emu")["total"] == 1


def test_run_stops_with_one_message_when_every_board_is_gone(two_arm_boards):
    url, started = two_arm_boards
    client = rpc.TrackerClient(url)

    alive = [b for b in started if b.proc.poll() is None]
    assert alive

    def job(board):
        for b in alive:
            b.kill()
        board.run(None, [])  # the session's board is dead now
        return {}

    # Usually the tracker already knows both are gone; if it still lists one, the request for
    # it fails too and the job runs out of attempts. Either way: one message, nothing lost.
    with pytest.raises(
        rpc.RunStopped, match="every board under key 'aarch64-emu' is gone|boards died 3 times"
    ) as err:
        rpc.run_on_boards(client, "aarch64-emu", [rpc.Job("only", job)], timeout=10)
    assert err.value.outcome.lost and not err.value.outcome.results


def test_no_tracker_is_one_clear_line(capsys):
    port = free_port()
    rc = main(
        [
            "bench",
            str(MODEL),
            "--calib",
            str(bundled("calib.npz")),
            "--target",
            "aarch64",
            "--tracker",
            f"127.0.0.1:{port}",
            "--key",
            "aarch64-emu",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [
        f"tvm-intq: error: no RPC tracker at 127.0.0.1:{port} (Connection refused); "
        f"start one with `tvm-intq tracker --host 127.0.0.1 --port {port}`"
    ]
    with pytest.raises(IntqError, match="no RPC tracker"):
        rpc.start_boards(get_board("aarch64-emu"), f"127.0.0.1:{port}")


def test_no_board_under_key_names_the_keys_there_are(tracker, boards):
    with pytest.raises(IntqError, match=r"no board registered under key 'rk3588'.*aarch64-emu"):
        rpc.TrackerClient(tracker[0]).request("rk3588", timeout=2)


def test_request_for_a_busy_board_times_out_clearly(tracker, boards):
    client = rpc.TrackerClient(tracker[0])
    held = client.request("riscv64-emu", timeout=30)  # the only riscv64 board
    try:
        t0 = time.time()
        with pytest.raises(
            rpc.BoardBusy,
            match=r"no board under key 'riscv64-emu' became free "
            r"within 2 s \(1 registered, 0 free",
        ):
            client.request("riscv64-emu", timeout=2)
        assert time.time() - t0 < 10
    finally:
        held.close()
        del held
    # Once the session ends the board offers itself again.
    board = wait_for(lambda: _try_request(client, "riscv64-emu"), 30, "the board to be free again")
    assert board.alive()
    board.close()


def _try_request(client, key):
    try:
        return client.request(key, timeout=3)
    except rpc.BoardBusy:
        return None


def test_wrong_architecture_is_a_clear_error(tracker, boards, data, tmp_path):
    # Before compiling: the key's boards cannot load what the target builds.
    with pytest.raises(
        IntqError,
        match=r"key 'aarch64-emu'.*aarch64 libraries; --target riscv64 "
        r"builds riscv64 ones: use --target aarch64",
    ):
        bench(MODEL, data, "riscv64", tracker[0], "aarch64-emu")
    # At upload: an x86-64 library is refused before it is sent.
    from test_targets import identity_module

    lib = tmp_path / "x86.so"
    HOST.export(api.build(identity_module(), HOST), lib)
    client = rpc.TrackerClient(tracker[0])
    board = client.request("aarch64-emu", timeout=60)
    try:
        with pytest.raises(
            IntqError,
            match=r"x86\.so is built for x86-64, but board 'aarch64-emu'.*"
            r"runs aarch64 libraries: compile with --target aarch64",
        ):
            board.upload(lib)
        # A board we know nothing about (a user's key): the board's loader refuses it, the
        # error says why, and the board lives on.
        board.spec = None
        name = board.upload(lib)
        with pytest.raises(IntqError, match=r"loading .*failed.*architecture"):
            board.load_vm(name)
        assert board.alive()
    finally:
        board.close()


# ---------------------------------------------------------------- processes and addresses


def _tree(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p] + p.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_our_servers_listen_on_loopback_only(tracker, boards):
    client = rpc.TrackerClient(tracker[0])
    session = client.request("aarch64-emu", timeout=60)  # a live board process under qemu too
    try:
        procs = _tree(tracker[1].pid) + [p for b in boards for p in _tree(b.pid)]
        assert any("qemu-aarch64" in " ".join(p.cmdline()) for p in procs)
        listening = []
        for p in procs:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    listening.append((p.pid, c.laddr.ip, c.laddr.port))
        assert len(listening) >= 1 + len(boards)  # the tracker and every board agent
        assert all(ip == "127.0.0.1" for _, ip, _ in listening), listening
        # And what the tracker hands out is loopback.
        for info in client.summary()["server_info"]:
            assert info["addr"][0] == "127.0.0.1"
    finally:
        session.close()


def test_board_up_command_registers_and_stops_cleanly(tracker):
    require_built(get_board("aarch64-emu"))
    client = rpc.TrackerClient(tracker[0])
    before = client.boards("aarch64-emu")["total"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tvm_intq.cli",
            "board",
            "up",
            "aarch64-emu",
            "--tracker",
            tracker[0],
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_pytest,
    )
    try:
        line = wait_line(proc, "up: key 'aarch64-emu'")
        assert "listening on 127.0.0.1:" in line
        wait_line(proc, "registered with")
        assert client.boards("aarch64-emu")["total"] == before + 1
        agents = [p for p in _tree(proc.pid) if "tvm_intq.targets.rpc" in " ".join(p.cmdline())]
        assert len(agents) == 1
        os.kill(proc.pid, signal.SIGTERM)  # Ctrl-C/SIGTERM stops the boards it started
        proc.wait(timeout=30)
        wait_for(
            lambda: not any(a.is_running() and a.status() != psutil.STATUS_ZOMBIE for a in agents),
            20,
            "the board agent to exit",
        )
        wait_for(
            lambda: client.boards("aarch64-emu")["total"] == before, 20, "the tracker to drop it"
        )
    finally:
        kill_group(proc)


def test_rpc_config_reaches_a_board_as_metaschedule_does(tracker, boards):
    config = rpc.rpc_config(tracker[0], "riscv64-emu", session_timeout=30)
    host, port = tracker[0].rsplit(":", 1)
    assert (config.tracker_host, config.tracker_port, config.tracker_key) == (
        host,
        int(port),
        "riscv64-emu",
    )
    # MetaSchedule's own RPCRunner gets its sessions this way: an emulated board serves them
    # like a real one (tuning on boards: tests/test_remote_tune.py).
    session = config.connect_server()
    assert session.get_function("tvm.rpc.server.workpath") is not None
    del session


def test_parse_addr():
    assert rpc.parse_addr("10.0.0.2:9191") == ("10.0.0.2", 9191)
    assert rpc.parse_addr("localhost") == ("localhost", 9190)
    for bad in ("host:port", ":9190", "h:0", "h:70000"):
        with pytest.raises(IntqError, match="HOST:PORT"):
            rpc.parse_addr(bad)


def test_elf_machine_of_exported_libraries(tmp_path):
    from test_targets import identity_module

    lib = tmp_path / "x.so"
    HOST.export(api.build(identity_module(), HOST), lib)
    assert rpc.elf_machine(lib) == 62
    (tmp_path / "t.txt").write_text("not elf")
    assert rpc.elf_machine(tmp_path / "t.txt") is None
