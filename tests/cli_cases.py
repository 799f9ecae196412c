"""Running ``tvm-intq`` as a user does (a subprocess), and what every bad input must give.

The bad-input modules (``test_inputs_<verb>.py``) hold each verb to the same four things
(issue 20): a non-zero exit, one line on stderr that names the problem and holds no
"Traceback", no input file changed, and no partial output left behind. :func:`refused` checks
all four: it snapshots a folder (every file's bytes, recursively) before the run and compares
after, so a changed input or a left-over temporary file fails the case.
"""

from __future__ import annotations

import hashlib
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tvm_intq.demo import bundled
from tvm_intq.targets.rpc.protocol import set_parent_death_signal

MODEL = bundled("mnist_cnn.onnx")
CALIB = bundled("calib.npz")
SETPRIV = shutil.which("setpriv")


def run_cli(
    *args, cwd=None, timeout: float = 600, file_size: int | None = None, unprivileged=False
) -> subprocess.CompletedProcess:
    """``python -m tvm_intq.cli ARGS``. ``file_size``: the largest file the process may write
    (RLIMIT_FSIZE: a write past it fails with EFBIG, as a full disk fails with ENOSPC).
    ``unprivileged``: without root's right to write anywhere (CAP_DAC_OVERRIDE), so a
    read-only folder is read-only to it."""
    cmd = [sys.executable, "-m", "tvm_intq.cli", *map(str, args)]
    if unprivileged and os.geteuid() == 0:
        cmd = [SETPRIV, "--bounding-set=-dac_override,-dac_read_search", *cmd]

    def limit():
        if file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, preexec_fn=limit
    )


def snapshot(folder) -> dict:
    """``{relative path: SHA-256 of the bytes (or "dir")}`` of everything under ``folder``."""
    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_line(proc, *words) -> str:
    """The single stderr line of a refused run, checked: non-zero exit, no traceback, each of
    ``words`` in it."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode not in (0, None), (proc.returncode, proc.stdout, proc.stderr)
    assert proc.returncode > 0, f"killed by signal {-proc.returncode}: {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tvm-intq"), lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def refused(folder, args, *words, **run_options) -> str:
    """Run ``args`` in ``folder`` and check the four properties (module docstring); returns
    the error line."""
    before = snapshot(folder)
    proc = run_cli(*args, cwd=folder, **run_options)
    line = one_line(proc, *words)
    after = snapshot(folder)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"files changed or left behind: {changed} ({line})"
    return line


def save_model(path, nodes, inputs, outputs, initializers=(), opset: int = 17) -> Path:
    """A small ONNX model from ``onnx.helper`` pieces, checked, saved at ``path``."""
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        outputs,
        [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(initializers).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def tiny_conv_model(path, rng=None) -> Path:
    """conv3x3 (4 channels) + relu on a 1x1x8x8 input ``x``: quick to compile."""
    rng = rng or np.random.default_rng(0)
    return save_model(
        path,
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        {
            "w": rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32),
            "b": rng.normal(0, 0.1, 4).astype(np.float32),
        },
    )


def tiny_calib(path, n: int = 8, rng=None, **extra) -> Path:
    rng = rng or np.random.default_rng(1)
    np.savez(path, x=rng.normal(0, 1, (n, 1, 8, 8)).astype(np.float32), **extra)
    return Path(path)


def qdq_model(path, scale=0.05, zero_point=0, weight_scale=0.01) -> Path:
    """A pre-quantized (QDQ) conv: ``Q(x) -> DQ -> Conv(DQ(Qw)) -> Q -> DQ``, with the
    activation ``scale``/``zero_point`` and per-channel ``weight_scale`` given (a bad value
    of any of them must be named)."""
    rng = np.random.default_rng(2)
    ws = np.broadcast_to(np.asarray(weight_scale, np.float32), (4,)).copy()
    inits = {
        "x_scale": np.array(scale, np.float32),
        "x_zp": np.array(zero_point, np.int8),
        "w_q": rng.integers(-127, 128, (4, 1, 3, 3)).astype(np.int8),
        "w_scale": ws,
        "w_zp": np.zeros(4, np.int8),
        "y_scale": np.array(0.1, np.float32),
        "y_zp": np.array(0, np.int8),
    }
    return save_model(
        path,
        [
            helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"]),
            helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wd"], axis=0),
            helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("QuantizeLinear", ["c", "y_scale", "y_zp"], ["yq"]),
            helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zp"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
    )


def read_only(folder) -> Path:
    """``folder`` (created if needed), made read-only (r-x)."""
    folder = Path(folder)
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    return folder


# ---- verbs that keep running (tracker, board up) -----------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cli(*args, cwd=None) -> subprocess.Popen:
    """``tvm-intq ARGS`` in the background, in a process group of its own that dies with the
    test process (stop it with :func:`stop`)."""

    def die_with_pytest():
        set_parent_death_signal(signal.SIGTERM)

    return subprocess.Popen(
        [sys.executable, "-m", "tvm_intq.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=die_with_pytest,
    )


_PENDING: dict = {}  # pid -> stdout bytes read past the last line returned


def read_until(proc: subprocess.Popen, needle: str, timeout: float = 120) -> list[str]:
    """stdout lines of ``proc`` up to the first holding ``needle`` (AssertionError if the
    process ends or ``timeout`` passes first)."""
    lines, buf = [], _PENDING.pop(proc.pid, b"")
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                lines.append(line.decode(errors="replace"))
                if needle in lines[-1]:
                    _PENDING[proc.pid] = buf  # the next call reads on from here
                    return lines
        elif proc.poll() is not None:
            break
    raise AssertionError(f"no line with {needle!r} (exit {proc.poll()}): {lines}")


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> tuple[int, str]:
    """Stop ``proc``'s process group; ``(exit code, its stderr)``."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    return proc.returncode, err.decode(errors="replace")
