"""Targets: registry, compile + export for every target to an ELF of the right machine."""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest
from conftest import require_tool

from tvm_intq.errors import IntqError
from tvm_intq.targets import AARCH64, HOST, RISCV64, TARGETS, TargetSpec, get_target

# ELF e_machine values.
EM_X86_64, EM_AARCH64, EM_RISCV = 62, 183, 243
EXPECTED_MACHINE = {
    "host": EM_X86_64,
    "aarch64": EM_AARCH64,
    "aarch64-i8mm": EM_AARCH64,
    "riscv64": EM_RISCV,
}
EF_RISCV_FLOAT_ABI_MASK, EF_RISCV_FLOAT_ABI_DOUBLE = 0x6, 0x4


def elf_header(path) -> tuple[int, int]:
    """(e_machine, e_flags) of a 64-bit little-endian ELF file."""
    data = open(path, "rb").read(64)
    assert data[:4] == b"\x7fELF", f"{path} is not an ELF file"
    assert data[4] == 2 and data[5] == 1, "expected ELF64 little-endian"
    (e_machine,) = struct.unpack_from("<H", data, 18)
    (e_flags,) = struct.unpack_from("<I", data, 48)
    return e_machine, e_flags


def int8_conv_module():
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 8, 8), "int8"))
    w = relax.Var("w", relax.TensorType((4, 8, 3, 3), "int8"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, w, padding=1, out_dtype="int32"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def identity_module():
    """A Relax function with no TIR kernel: the executable has no LLVM code of its own."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2,), "int8"))
    with bb.function("main", [x]):
        bb.emit_func_output(x)
    return bb.get()


def conv_ref(x, w):
    xp = np.pad(x.astype(np.int32), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((1, w.shape[0], x.shape[2], x.shape[3]), np.int32)
    for i in range(x.shape[2]):
        for j in range(x.shape[3]):
            out[0, :, i, j] = np.einsum(
                "cij,ocij->o", xp[0, :, i : i + 3, j : j + 3], w.astype(np.int32)
            )
    return out


def _require_toolchain(spec: TargetSpec):
    if not spec.is_host:
        require_tool(spec.cross_compiler)


# ---------------------------------------------------------------- registry


def test_registry_names_and_lookup():
    assert set(TARGETS) == {"host", "aarch64", "aarch64-i8mm", "riscv64"}
    for name, spec in TARGETS.items():
        assert isinstance(spec, TargetSpec)
        assert spec.name == name
        assert get_target(name) is spec
        assert spec.description
    assert HOST.is_host and not AARCH64.is_host and not RISCV64.is_host


def test_unknown_target_lists_known_names():
    with pytest.raises(IntqError) as err:
        get_target("sparc")
    msg = str(err.value)
    assert "sparc" in msg and "\n" not in msg
    for name in TARGETS:
        assert name in msg


def test_target_dicts():
    import tvm

    for spec in TARGETS.values():
        t = spec.target()
        assert isinstance(t, tvm.target.Target)
        assert t.kind.name == "llvm"
        assert int(t.attrs["num-cores"]) >= 1
    assert "+dotprod" in AARCH64.target_dict()["mattr"]
    assert "+i8mm" not in AARCH64.target_dict()["mattr"]
    assert "+i8mm" in get_target("aarch64-i8mm").target_dict()["mattr"]
    assert "+v" in RISCV64.target_dict()["mattr"]
    host = HOST.target_dict()
    assert host["mcpu"] and host["mcpu"] != "native"
    # target_dict hands out copies: mutating one cannot change the spec.
    AARCH64.target_dict()["mattr"].append("+sve")
    assert "+sve" not in AARCH64.target_dict()["mattr"]


# ---------------------------------------------------------------- compile + export


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_compile_and_export_elf(name, tmp_path):
    import tvm

    spec = get_target(name)
    _require_toolchain(spec)
    ex = tvm.compile(int8_conv_module(), spec.target())
    lib = tmp_path / "m.so"
    spec.export(ex, lib)
    machine, flags = elf_header(lib)
    assert machine == EXPECTED_MACHINE[name]
    if machine == EM_RISCV:
        assert flags & EF_RISCV_FLOAT_ABI_MASK == EF_RISCV_FLOAT_ABI_DOUBLE  # lp64d


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_export_without_kernels(name, tmp_path):
    """Regression: with no LLVM code in the module, TVM packs the VM blob with the host
    triple (cross link fails) or, for riscv64, as soft-float (ld refuses to merge)."""
    import tvm

    spec = get_target(name)
    _require_toolchain(spec)
    ex = tvm.compile(identity_module(), spec.target())
    lib = tmp_path / "id.so"
    spec.export(ex, lib)
    assert elf_header(lib)[0] == EXPECTED_MACHINE[name]


def test_host_export_loads_and_runs(tmp_path):
    import tvm
    from tvm import relax

    ex = tvm.compile(int8_conv_module(), HOST.target())
    lib = tmp_path / "m.so"
    HOST.export(ex, lib)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (1, 8, 8, 8), dtype=np.int8)
    w = rng.integers(-128, 128, (4, 8, 3, 3), dtype=np.int8)
    got = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w)).numpy()
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, conv_ref(x, w))


# ---------------------------------------------------------------- missing toolchain


class _MustNotExport:
    def export_library(self, *args, **kwargs):  # pragma: no cover - failing path
        raise AssertionError("export_library called although the cross compiler is missing")


def test_missing_cross_compiler_names_tool_and_package(tmp_path):
    spec = dataclasses.replace(
        AARCH64,
        name="fake-board",
        cross_compiler="no-such-arch-linux-gnu-g++",
        apt_packages=("g++-no-such-arch-linux-gnu",),
    )
    with pytest.raises(IntqError) as err:
        spec.export(_MustNotExport(), tmp_path / "m.so")
    msg = str(err.value)
    assert "\n" not in msg
    assert "no-such-arch-linux-gnu-g++ not found" in msg
    assert "install g++-no-such-arch-linux-gnu" in msg
    assert not (tmp_path / "m.so").exists()


def test_require_tool_skips_locally_fails_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_tool("no-such-tool-xyz")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        require_tool("no-such-tool-xyz")
    assert require_tool("sh")
