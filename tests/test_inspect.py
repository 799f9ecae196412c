"""`tvm-intq inspect` (tvm_intq/inspect.py): instruction counts per kernel from the library's
disassembly, and the bundled model's host int8 convs using vpdpbusd."""

from __future__ import annotations

import pytest

from tvm_intq import cli
from tvm_intq.demo import bundled
from tvm_intq.frontend import import_onnx
from tvm_intq.inspect import count_instructions, inspect_library, kernel_of
from tvm_intq.relay_passes.ir_utils import op_name
from tvm_intq.relay_passes.rebuild import bindings_of
from tvm_intq.schedules.intrinsics import INTRINSICS, supported
from tvm_intq.targets import get_target

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


def test_kernel_names_from_symbols():
    assert kernel_of("__tvm_ffi_pack_int8") == "pack_int8"
    assert kernel_of("pack_int8_compute_") == "pack_int8"
    assert kernel_of("frame_dummy") is None


def test_counts_per_kernel():
    counts = count_instructions(ASM, "x86-64")
    assert list(counts) == ["fused_conv2d_packed_int8_requant1_add"]  # frame_dummy: no kernel
    c = counts["fused_conv2d_packed_int8_requant1_add"]
    assert (c["vpdpbusd"], c["vpmaddwd"], c["zmm"], c["ymm"], c["total"]) == (2, 1, 2, 1, 5)


@pytest.mark.slow
@pytest.mark.skipif(not supported(INTRINSICS["x86-vnni"], get_target("host").target()),
                    reason="this CPU has no AVX512-VNNI")
def test_bundled_model_int8_convs_use_vpdpbusd(tmp_path, capsys):
    lib = tmp_path / "mnist.so"
    assert cli.main(["compile", str(bundled("mnist_cnn.onnx")), "--calib", str(bundled("calib.npz")),
                     "-o", str(lib), "--no-progress"]) == 0
    kernels = inspect_library(lib)["kernels"]
    packed = {k: v for k, v in kernels.items() if "packed_int8" in k}
    assert packed and all(v["vpdpbusd"] > 0 and v["zmm"] > 0 for v in packed.values()), packed
    # Every int8 conv is packed except the grouped (depthwise) ones, which VNNI does not fit.
    mod, _ = import_onnx(bundled("mnist_cnn.onnx"))
    convs = [b.value for b in bindings_of(mod["main"]) if op_name(b.value) == "relax.nn.conv2d"]
    grouped = sum(int(c.attrs.groups) != 1 for c in convs)
    unpacked = [k for k in kernels if "conv2d" in k and "packed" not in k]
    assert len(unpacked) == grouped and len(convs) > grouped
    capsys.readouterr()
    assert cli.main(["inspect", str(lib)]) == 0
    out = capsys.readouterr().out
    assert "vpdpbusd" in out and "conv2d_packed_int8" in out
