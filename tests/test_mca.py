"""llvm-mca cycle estimates per kernel: the re-assembled blocks parse, the figures are positive,
and int8 convolution beats fp32 on the modelled Cortex-A76-class cores (the issue's claim)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import missing
from test_insn_count import require_counting

from tvm_intq.errors import IntqError
from tvm_intq.targets.boards import get_board
from tvm_intq.targets.insn_count import run_counted
from tvm_intq.targets.mca import (
    CORES,
    architecture,
    instruction_text,
    llvm_tools,
    mca_cycles,
    region_cycles,
)

pytestmark = pytest.mark.integration  # whole models, boards or processes

# A small layer of a CNN: 16 -> 32 channels, 3x3, 16x16 pixels (as in the bundled model).
X, W = (1, 16, 16, 16), (32, 16, 3, 3)


def require_mca():
    try:
        llvm_tools()
    except IntqError as err:
        missing(str(err))


def conv_library(dtype: str, board, folder):
    """One conv2d, int8 x int8 -> int32 or float32, built by tvm-intq's pipeline for ``board``."""
    from tvm import relax

    from tvm_intq import api

    bb = relax.BlockBuilder()
    x, w = relax.Var("x", relax.TensorType(X, dtype)), relax.Var("w", relax.TensorType(W, dtype))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            out_dtype = "int32" if dtype == "int8" else dtype
            y = bb.emit_output(bb.emit(relax.op.nn.conv2d(x, w, padding=1, out_dtype=out_dtype)))
        bb.emit_func_output(y)
    spec = board.target_spec()
    path = folder / f"conv_{dtype}.so"
    spec.export(api.build(bb.get(), spec), path)
    rng = np.random.default_rng(0)
    if dtype == "int8":
        args = [
            rng.integers(-128, 128, X, dtype=np.int8),
            rng.integers(-128, 128, W, dtype=np.int8),
        ]
    else:
        args = [
            rng.standard_normal(X).astype(np.float32),
            rng.standard_normal(W).astype(np.float32),
        ]
    return path, args


@pytest.mark.parametrize("name", ["aarch64-emu", "riscv64-emu"])
def test_every_core_estimates_a_positive_number_for_the_conv(name, tmp_path):
    board = get_board(name)
    require_counting(board)
    require_mca()
    lib, args = conv_library("int8", board, tmp_path)
    run = run_counted(lib, board, args, calls=1, blocks=True)
    for core in CORES[architecture(board)]:
        cycles = mca_cycles(lib, board, args, core, execution=run)
        assert cycles and all(c > 0 for c in cycles.values()), (core, cycles)
        assert any("conv" in k for k in cycles), cycles


def test_int8_conv_fewer_cycles_than_fp32_on_cortex_a76_class(tmp_path):
    board = get_board("aarch64-emu")
    require_counting(board)
    require_mca()
    totals = {}
    for dtype in ("int8", "float32"):
        lib, args = conv_library(dtype, board, tmp_path)
        run = run_counted(lib, board, args, calls=1, blocks=True)
        totals[dtype] = {
            core: sum(mca_cycles(lib, board, args, core, execution=run).values())
            for core in ("cortex-a76", "neoverse-n1")
        }
    print(totals)
    for core in ("cortex-a76", "neoverse-n1"):
        assert totals["int8"][core] < totals["float32"][core], totals


@pytest.mark.parametrize(
    "printed, arch, text",
    [
        ("jalr\tra <__tvm_set_raised_12>", "riscv64", "jalr ra"),  # jalr ra, 0(ra)
        ("jalr\t-0x322(ra) <memset@plt>", "riscv64", "jalr -0x322(ra)"),
        ("bnez\ta5, 0x7d5a0 <f_compute_+0x60>", "riscv64", "bnez a5, ."),
        ("ld\ta0, 0x10(sp)  # 0x8c7f4", "riscv64", "ld a0, 0x10(sp)"),
        ("b.ne\t0x1a6fb <k+0x1c>", "aarch64", "b.ne ."),
        ("ldr\tq0, [x1, #16]   // =0x10", "aarch64", "ldr q0, [x1, #16]"),
    ],
)
def test_objdump_text_becomes_what_llvm_mca_assembles(printed, arch, text):
    """Branch targets become ``.``, annotations and comments go, and a register name ending in
    a hex digit before a symbol (``jalr ra <f>``) is not taken for an address: PP-OCR cls's
    riscv64 build had one such call, and ``jalr r.`` stopped the emulated figures."""
    assert instruction_text(printed, arch) == text
    assert region_cycles([[text]], arch, CORES[arch][-1])[0] is not None  # llvm-mca models it
