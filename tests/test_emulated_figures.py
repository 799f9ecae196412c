"""Which emulated board measures a target, and how the figures are labelled and written
(plain data in, no emulator needed)."""

from __future__ import annotations

import json

import pytest

from tvm_intq.deploy.emulated_figures import INSTRUCTIONS_LABEL, mca_label
from tvm_intq.errors import IntqError
from tvm_intq.reports.speed import emulated_markdown, write_emulated
from tvm_intq.targets.boards import emulated_board

pytestmark = pytest.mark.integration  # whole models, boards or processes


@pytest.mark.parametrize(
    "target, board, cpu",
    [
        ("aarch64", "aarch64-emu", "neoverse-n1"),
        ("aarch64-i8mm", "aarch64-i8mm-emu", "neoverse-n2"),
        ("riscv64", "riscv64-emu", "rv64,v=true"),
    ],
)
def test_each_target_has_its_emulated_board(target, board, cpu):
    # the emulated core is the one the target describes (not qemu's "max": SVE/SME code paths
    # in libc and in the peers would describe another machine)
    assert emulated_board(target).name == board
    assert " ".join(emulated_board(target).emulator.qemu_args).startswith(f"-cpu {cpu}")


def test_host_has_no_emulated_board():
    with pytest.raises(IntqError, match="no emulated board runs host libraries"):
        emulated_board("host")


def figures():
    core = "neoverse-n1"
    progs = {
        p: {"instructions": n, "mca_cycles": {core: {"total": c, "convs": c * 0.8, "kernels": {}}}}
        for p, n, c in (("int8", 1000, 500.0), ("fp32", 4000, 2000.0))
    }
    return {
        "board": "aarch64-emu",
        "emulator": "qemu-aarch64 -cpu max",
        "instructions_label": INSTRUCTIONS_LABEL,
        "mca_method": "m",
        "mca_labels": {core: mca_label(core)},
        "programs": progs,
        "command": "tvm-intq bench ...",
        "fp32_over_int8": {"instructions": 4.0, "mca_cycles": {core: {"total": 4.0, "convs": 4.0}}},
    }


def test_figures_are_labelled_as_what_they_are(tmp_path):
    md = emulated_markdown(figures())
    assert "qemu instructions executed per inference" in md
    assert "llvm-mca estimate, neoverse-n1 (Cortex-A76 class" in md
    assert "| 1,000 | 4,000 | 4.00x |" in md
    written = write_emulated(
        {"model": "m", "targets": {"aarch64": figures()}, "command": "c"}, tmp_path
    )
    assert [p.name for p in written] == ["emulated.json", "emulated.md", "emulated.png"]
    assert json.loads((tmp_path / "emulated.json").read_text())["command"] == "c"
