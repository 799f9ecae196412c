"""ARM and RISC-V int8 dot-product intrinsics (schedules/intrinsics.py): which one a target's CPU
features select, and packed kernels tensorized with each (sdot, i8mm smmla, RVV vwmacc) run
on the emulated boards and match the numpy reference of the integer program bit for bit, the
RVV ones at VLEN 128 and 256 from one library; so does the bundled model built for i8mm and
run at VLEN 256 (test_rpc.py runs it for aarch64 and riscv64 at VLEN 128)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from test_boards import require_built
from test_pack_int8 import conv_depthwise, inputs, int8_layer, transposed_layer
from test_rpc import free_port, kill_group, start_tracker_cli

from tvm_intq import api
from tvm_intq.demo import bundled
from tvm_intq.evaluation.reference import run_reference
from tvm_intq.schedules import build_pipeline, tir_pipeline
from tvm_intq.schedules.intrinsics import select
from tvm_intq.targets import get_target, rpc
from tvm_intq.targets.boards import get_board

pytestmark = pytest.mark.integration  # whole models, boards or processes


def _target(mtriple, *mattr):
    return tvm.target.Target({"kind": "llvm", "mtriple": mtriple, "mattr": list(mattr)})


@pytest.mark.parametrize(
    "target, expected",
    [
        ("aarch64", "arm-sdot"),
        ("aarch64-i8mm", "arm-i8mm"),
        ("riscv64", "rvv-vwmacc"),
        ("x86:cascadelake", "x86-vnni"),
        ("x86:haswell", "x86-avx2"),
        ("x86:nehalem", None),  # no AVX2: nothing fits, convs stay untensorized
    ],
)
def test_target_features_select_the_best_instruction(target, expected):
    if target.startswith("x86:"):  # the host definition on x86 CPUs of other generations
        spec = get_target("host")
        tvm_target = tvm.target.Target({"kind": "llvm", "mcpu": target[4:]})
    else:
        spec = get_target(target)
        tvm_target = spec.target()
    got = select(spec.int8_dot, tvm_target)
    assert (got.name if got else None) == expected


def test_plain_neon_and_scalar_riscv_fall_back_untensorized():
    assert select(get_target("aarch64").int8_dot, _target("aarch64-linux-gnu", "+neon")) is None
    assert (
        select(
            get_target("riscv64").int8_dot,
            _target("riscv64-linux-gnu", "+m", "+a", "+f", "+d", "+c"),
        )
        is None
    )


# ---------------------------------------------------------------- bit-exact on the boards

# Awkward shapes: channels that fill no instruction block, a stride-2 conv with padding and
# the extreme zero point (phase-split input for smmla), an odd output width, a dense layer.
CASES = {
    "odd-channels-stride2": dict(shape=(1, 3, 9, 7), out_channels=7, stride=2, zp_in=-128),
    "dilated-relu-oddwidth": dict(
        shape=(1, 17, 8, 7), out_channels=20, dilation=2, pad=2, relu=True
    ),
    "dense": dict(shape=(3, 37), out_channels=10, dense=True),
    # 8 blocks of sdot's 4 channels, width 8: a register tile of 4 columns x 4 channel blocks
    "channel-blocks": dict(shape=(1, 8, 5, 8), out_channels=32),
    # a 1-channel input; a lookup table and a requantize after it, applied in the kernel
    "1-channel-lookup": dict(
        shape=(1, 1, 9, 7),
        out_channels=18,
        stride=2,
        zp_in=-128,
        lookup="per-channel",
        rescale="channel",
    ),
    # conv -> depthwise (stride 2, 5x5) -> lookup -> conv: the depthwise kernel in the packed
    # layout where the target blocks it (sdot), in NCHW where not (i8mm, RVV)
    "conv-depthwise-lookup": dict(
        shape=(1, 5, 10, 7), channels=6, stride=2, kernel=5, zp_in=-128, lookup="per-channel"
    ),
    # one lookup table for every channel (SiLU, hardswish, ... after a conv or a depthwise
    # conv): gathered with tbl/tbx on ARM (schedules/table_lookup.py), 4 pixels x 4 channels
    "channel-blocks-shared-lookup": dict(shape=(1, 8, 5, 8), out_channels=32, lookup="shared"),
    "depthwise-shared-lookup": dict(shape=(1, 8, 8, 8), channels=8, zp_in=3, lookup="shared"),
    # a transposed conv: one packed stride-1 conv over its input, depth to space after it
    # (for i8mm and RVV from their multi-row layouts)
    "transposed-3x3s2-outpad": dict(
        shape=(1, 5, 4, 5), out_channels=7, kernel=3, pad=1, output_padding=1, zp_in=127
    ),
}
#: Cases built by conv_depthwise and transposed_layer, the others by int8_layer.
BUILDERS = {
    "conv-depthwise-lookup": conv_depthwise,
    "depthwise-shared-lookup": conv_depthwise,
    "transposed-3x3s2-outpad": transposed_layer,
}
# (target compiled for, board run on): each target on the board that emulates its core.
RUNS = [
    ("aarch64", "aarch64-emu"),
    ("aarch64-i8mm", "aarch64-i8mm-emu"),
    ("riscv64", "riscv64-emu"),
    ("riscv64", "riscv64-emu-vlen256"),
]


@pytest.fixture(scope="module")
def libraries(tmp_path_factory):
    """``{(target, case): (library path, module)}``, each compiled once."""
    cache = {}

    def get(target, case):
        if (target, case) not in cache:
            spec = get_target(target)
            mod = BUILDERS.get(case, int8_layer)(**CASES[case])
            ex = tvm.compile(  # as tvm-intq compile builds (compiler.steps.build)
                mod,
                spec.target(),
                relax_pipeline=build_pipeline(spec.int8_dot),
                tir_pipeline=tir_pipeline(),
            )
            intrin = select(spec.int8_dot, spec.target())
            asm = ex.mod.imports[0].inspect_source("asm")
            assert re.search(rf"\b{re.escape(intrin.instruction)}\b", asm), (
                f"{target}/{case}: no {intrin.instruction} in the kernels"
            )
            if target == "aarch64" and "shared-lookup" in case:  # table_lookup's tbl/tbx
                assert re.search(r"\btbx\b", asm), f"{target}/{case}: the lookup is not tbx"
            path = tmp_path_factory.mktemp(f"{target}-{case}") / "layer.so"
            spec.export(ex, path)
            cache[target, case] = (path, mod)
        return cache[target, case]

    return get


@pytest.fixture(scope="module")
def tracker():
    port = free_port()
    proc = start_tracker_cli(port)
    yield f"127.0.0.1:{port}"
    kill_group(proc)


@pytest.fixture(scope="module")
def board_sessions(tracker, tmp_path_factory):
    """One emulated board of each kind in RUNS; ``get(name)`` opens a session on it."""
    started = {}
    logs = tmp_path_factory.mktemp("board-logs")

    def get(name):
        board = get_board(name)
        require_built(board)
        if name not in started:
            started[name] = rpc.start_boards(board, tracker, 1, log_dir=str(logs))
        return rpc.TrackerClient(tracker).request(board.key, timeout=120)

    yield get
    for boards in started.values():
        for b in boards:
            b.kill()


@pytest.mark.integration
@pytest.mark.parametrize("target, board", RUNS, ids=[f"{t}-on-{b}" for t, b in RUNS])
def test_tensorized_kernels_are_bit_exact_on_the_board(target, board, libraries, board_sessions):
    with board_sessions(board) as session:
        for case, params in CASES.items():
            path, mod = libraries(target, case)
            vm = session.load_vm(session.upload(path))
            for seed in (1, 2):
                x = inputs(params["shape"], seed)
                (got,) = session.run(vm, [x])
                np.testing.assert_array_equal(
                    got, run_reference(mod, {"x": x}), err_msg=f"{case}, seed {seed}"
                )


@pytest.mark.integration
@pytest.mark.parametrize(
    "target, board", [("aarch64-i8mm", "aarch64-i8mm-emu"), ("riscv64", "riscv64-emu-vlen256")]
)
def test_bundled_model_is_bit_exact_on_the_board(
    target, board, bundled_integer, board_sessions, tmp_path
):
    spec = get_target(target)
    lib = tmp_path / "mnist.so"
    spec.export(api.build(bundled_integer, spec), lib)
    x = np.load(bundled("heldout.npz"))["input"][:3]
    with board_sessions(board) as session:
        vm = session.load_vm(session.upload(lib))
        for i in range(len(x)):
            (got,) = session.run(vm, [x[i : i + 1]])
            want = run_reference(bundled_integer, {"input": x[i : i + 1]})
            np.testing.assert_array_equal(got, want)
