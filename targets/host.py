"""The machine we run on: LLVM tuned for the host CPU, linked with the host compiler."""

from __future__ import annotations

import os

from tvm_intq.targets.spec import TargetSpec


def _host_cores() -> int:
    # The CPUs this process may use (a container or taskset may allow fewer than exist).
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def host_target_dict() -> dict:
    """The host's Target dict. ``"mcpu": "native"`` fails at codegen with the TVM wheel
    (its LLVM triple is x86_64-conda-linux-gnu), so ask LLVM for the CPU name instead:
    that is what -mcpu=native resolves to.

    ``+prefer-no-gather``: LLVM's loop vectorizer otherwise turns strided and indexed loads
    (a 2x2/2 pool's window, a lookup table) into AVX2/AVX-512 gathers, and the scatters that
    go with them, which cost more than the scalar or shuffled loads they replace on the AMD
    cores here (znver4: the unseen CNN 8 % faster without its 112 gathers and 28 scatters,
    PP-OCR cls no slower without its 144) and on Intel cores since the Downfall microcode,
    where LLVM already prefers none."""
    import tvm

    return {
        "kind": "llvm",
        "mcpu": tvm.target.codegen.llvm_get_system_cpu(),
        "num-cores": _host_cores(),
        "mattr": ["+prefer-no-gather", "+prefer-no-scatter"],
    }


HOST = TargetSpec(
    name="host",
    description="this machine (x86-64), LLVM for the host CPU, host compiler",
    tvm_target=host_target_dict,
    # vpdpbusd when the CPU has AVX512-VNNI, else AVX2's exact int16 vpmaddwd.
    int8_dot=("x86-vnni", "x86-avx2"),
)
