"""`tvm-intq inspect` (targets/disassembly.py): instruction counts per kernel from the library's
disassembly, and the bundled model's int8 convs using vpdpbusd on the host, sdot on aarch64,
smmla on aarch64-i8mm and RVV widening multiply-adds on riscv64."""

from __future__ import annotations

import pytest
from conftest import require_tool

from tvm_intq import api, cli
from tvm_intq.demo import bundled
from tvm_intq.frontends import import_model
from tvm_intq.relay_passes.analysis.ir_utils import op_name
from tvm_intq.relay_passes.analysis.rebuild import bindings_of
from tvm_intq.schedules.intrinsics import select
from tvm_intq.targets import get_target
from tvm_intq.targets.disassembly import count_instructions, inspect_library, kernel_of

pytestmark = pytest.mark.integration  # whole models, boards or processes

ASM = """
0000000000001120 <__tvm_ffi_fused_conv2d_packed_int8_requant1_add>:
    1120:       pushq   %rbp
    1121:       vpdpbusd        %zmm1, %zmm2, %zmm0
0000000000002000 <fused_conv2d_packed_int8_requant1_add_compute_>:
    2000:       vpdpbusd        (%rax), %zmm2, %zmm0
    2008:       vpmaddwd        %ymm1, %ymm2, %ymm3
    2010:       retq
0000000000003000 <frame_dummy>:
    3000:       vpdpbusd        %zmm1, %zmm2, %zmm0
"""


RVV_ASM = """
0000000000001000 <conv2d_packed_int8_requant_compute_>:
    1000: vsetivli zero, 0x10, e16, m2, tu, ma
    1004: vwmacc.vx v16, a0, v20
    1008: vwmaccsu.vv v16, v8, v20
    100c: vwmul.vv v8, v9, v10
    1010: vadd.vv v8, v9, v10
"""


def test_kernel_names_from_symbols():
    assert kernel_of("__tvm_ffi_pack_int8") == "pack_int8"
    assert kernel_of("pack_int8_compute_") == "pack_int8"
    assert kernel_of("frame_dummy") is None


def test_counts_per_kernel():
    counts = count_instructions(ASM, "x86-64")
    assert list(counts) == ["fused_conv2d_packed_int8_requant1_add"]  # frame_dummy: no kernel
    c = counts["fused_conv2d_packed_int8_requant1_add"]
    assert (c["vpdpbusd"], c["vpmaddwd"], c["zmm"], c["ymm"], c["total"]) == (2, 1, 2, 1, 5)


def test_rvv_counts_by_instruction_family():
    c = count_instructions(RVV_ASM, "riscv64")["conv2d_packed_int8_requant"]
    assert (c["vwmacc*"], c["vwmul*"], c["vset*"], c["total"]) == (2, 1, 1, 5)


def grouped_convs(model) -> tuple[int, int]:
    """``(int8 convs, grouped ones)`` of an ONNX model: the grouped (depthwise) ones fit no
    dot-product layout (they get a depthwise kernel of their own)."""
    mod, _ = import_model(model)
    convs = [b.value for b in bindings_of(mod["main"]) if op_name(b.value) == "relax.nn.conv2d"]
    return len(convs), sum(int(c.attrs.groups) != 1 for c in convs)


@pytest.mark.integration
@pytest.mark.parametrize("target", ["aarch64", "aarch64-i8mm", "riscv64"])
def test_bundled_model_int8_convs_use_the_targets_instruction(target, bundled_integer, tmp_path):
    """sdot (dotprod), smmla (i8mm) or vwmacc (RVV): every packed int8 conv/dense kernel."""
    spec = get_target(target)
    require_tool(spec.cross_compiler)
    lib = tmp_path / f"mnist-{target}.so"
    spec.export(api.build(bundled_integer, spec), lib)
    family = {"aarch64": "sdot", "aarch64-i8mm": "smmla", "riscv64": "vwmacc*"}[target]
    assert select(spec.int8_dot, spec.target()).instruction.startswith(family.rstrip("*"))
    kernels = inspect_library(lib)["kernels"]
    packed = {k: v[family] for k, v in kernels.items() if "packed_int8" in k}
    convs, grouped = grouped_convs(bundled("mnist_cnn.onnx"))
    assert len(packed) == convs - grouped + 1, packed  # + the dense layer
    assert all(n > 0 for n in packed.values()), packed


@pytest.mark.integration
def test_bundled_model_int8_convs_use_the_hosts_dot_product(tmp_path, capsys):
    """vpdpbusd (zmm) on a CPU with AVX512-VNNI, vpmaddwd (ymm) on an AVX2 one."""
    host = get_target("host")
    x86 = select(host.int8_dot, host.target())
    register = "zmm" if x86.name == "x86-vnni" else "ymm"
    lib = tmp_path / "mnist.so"
    assert (
        cli.main(
            [
                "compile",
                str(bundled("mnist_cnn.onnx")),
                "--calib",
                str(bundled("calib.npz")),
                "-o",
                str(lib),
                "--no-progress",
            ]
        )
        == 0
    )
    kernels = inspect_library(lib)["kernels"]
    packed = {k: v for k, v in kernels.items() if "packed_int8" in k}
    assert packed and all(v[x86.instruction] > 0 and v[register] > 0 for v in packed.values())
    # Every int8 conv is packed except the grouped (depthwise) ones, which a dot product does
    # not fit:
    # those are the depthwise kernel, and no conv is left to TVM's generic one.
    convs, grouped = grouped_convs(bundled("mnist_cnn.onnx"))
    depthwise = [k for k in kernels if "depthwise_int8" in k]  # FuseOps may fuse around it
    assert len(depthwise) == grouped and convs > grouped > 0
    assert not [k for k in kernels if "conv2d" in k and "packed" not in k]
    capsys.readouterr()
    assert cli.main(["inspect", str(lib)]) == 0
    out = capsys.readouterr().out
    assert x86.instruction in out and "conv2d_packed_int8" in out
