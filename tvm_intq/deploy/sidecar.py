"""The sidecar ``model.so.json`` that ``compile`` writes beside a library, and the check a
library passes before anything loads it.

The sidecar holds what ``run`` needs (input names, shapes and dtypes, output names, target)
and what identifies the library it was written with: its size, its SHA-256 and the LLVM
target triple. ``dlopen`` of a truncated or corrupted shared library can kill the process
(SIGBUS when a mapped page lies past the end of the file, SIGSEGV on a damaged relocation)
before Python can say anything, so ``run`` (and anything else that loads a library on this
machine) verifies the file against its sidecar first and refuses a mismatch in one line.
No TVM here: the check runs before TVM is imported.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from tvm_intq.errors import IntqError
from tvm_intq.files import sha256
from tvm_intq.targets.rpc.board_session import elf_machine, machine_name
from tvm_intq.targets.spec import ELF_MACHINES

#: Keys every sidecar holds, and what each must be.
REQUIRED = {
    "target": str,
    "inputs": dict,
    "input_dtypes": dict,
    "outputs": list,
    "library": dict,
    "target_triple": str,
}


def sidecar_path(library) -> Path:
    """Where ``compile`` writes a library's inputs, outputs and target (``model.so.json``)."""
    return Path(str(library) + ".json")


def library_fields(path, triple: str) -> dict:
    """What the sidecar records of the library file ``path``, built for ``triple``."""
    path = Path(path)
    return {
        "target_triple": triple,
        "library": {"size": path.stat().st_size, "sha256": sha256(path)},
    }


def read_sidecar(library) -> dict:
    """The sidecar of ``library``, checked for the keys ``run`` reads: one
    :class:`IntqError` line if it is missing, unreadable, not JSON or incomplete."""
    library = Path(library)
    if not library.exists():
        raise IntqError(f"{library}: no such library")
    if library.is_dir():
        raise IntqError(f"{library}: is a folder, not a library")
    meta = sidecar_path(library)
    again = f"compile the model again with 'tvm-intq compile ... -o {library}'"
    if not meta.is_file():
        raise IntqError(f"{library}: its sidecar {meta.name} is missing; {again}")
    try:
        data = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise IntqError(f"{meta}: cannot read the sidecar ({err}); {again}") from None
    except json.JSONDecodeError as err:
        what = (
            "empty"
            if not meta.read_bytes().strip()
            else f"not valid JSON ({err.msg}, line {err.lineno})"
        )
        raise IntqError(f"{meta}: the sidecar is {what}; {again}") from None
    if not isinstance(data, dict):
        raise IntqError(f"{meta}: the sidecar is not a JSON object; {again}")
    if "library" not in data and {"target", "inputs", "outputs"} <= set(data):
        raise IntqError(
            f"{meta} records no size and SHA-256 of {library.name} (written by an older "
            f"tvm-intq), so the library cannot be checked before it is loaded; {again}"
        )
    for key, kind in REQUIRED.items():
        if not isinstance(data.get(key), kind):
            raise IntqError(f"{meta}: the sidecar has no valid '{key}'; {again}")
    lib = data["library"]
    if not isinstance(lib.get("size"), int) or not isinstance(lib.get("sha256"), str):
        raise IntqError(f"{meta}: the sidecar has no valid library size and SHA-256; {again}")
    return data


def check_library(library, meta: dict | None = None, host: bool = True) -> dict:
    """Verify ``library`` against its sidecar (size, SHA-256, and for a library to load here
    the machine of its target triple) before anything loads it; returns the sidecar."""
    library = Path(library)
    meta = read_sidecar(library) if meta is None else meta
    again = f"compile it again with 'tvm-intq compile ... -o {library}'"
    size, want = library.stat().st_size, meta["library"]["size"]
    if size != want:
        raise IntqError(
            f"{library}: {size} bytes, but its sidecar {sidecar_path(library).name} says "
            f"{want}: the library was {'cut short' if size < want else 'changed'}; {again}"
        )
    if sha256(library) != meta["library"]["sha256"]:
        raise IntqError(
            f"{library}: its SHA-256 does not match its sidecar {sidecar_path(library).name}: "
            f"the file was changed or corrupted; {again}"
        )
    triple = meta["target_triple"]
    wanted = ELF_MACHINES.get(triple.split("-")[0])
    got = elf_machine(library)
    if wanted is not None and got != wanted:
        raise IntqError(
            f"{library}: built for {triple}, but the file is {machine_name(got)}; {again}"
        )
    if host:
        here = ELF_MACHINES.get(_host_arch())
        if meta["target"] != "host" or (here is not None and wanted not in (None, here)):
            raise IntqError(
                f"{library} was built for {meta['target']} ({triple}); this machine is "
                f"{platform.machine()}: run it on such a board (tvm-intq bench)"
            )
    return meta


def _host_arch() -> str:
    arch = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
