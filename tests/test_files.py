"""tvm_intq/files.py: outputs checked before the work, and written whole (a temporary file in
the target's folder, renamed when complete; removed on any exception, Ctrl-C included)."""

from __future__ import annotations

import os
import stat

import pytest

from tvm_intq.errors import IntqError
from tvm_intq.files import (
    atomic_path,
    check_distinct,
    check_output_file,
    check_output_folder,
    write_text,
)


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_written_whole_with_the_usual_permissions(tmp_path):
    target = tmp_path / "r.json"
    old = os.umask(0o022)
    try:
        write_text(target, "{}\n")
    finally:
        os.umask(old)
    assert target.read_text() == "{}\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert listing(tmp_path) == ["r.json"]


@pytest.mark.parametrize("error", [RuntimeError("link failed"), KeyboardInterrupt()])
def test_an_interrupted_write_keeps_the_old_file_and_leaves_nothing(tmp_path, error):
    """Ctrl-C during compile's link step left a 0-byte library."""
    target = tmp_path / "m.so"
    target.write_bytes(b"old library")
    with pytest.raises(type(error)), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a libr")
        raise error
    assert target.read_bytes() == b"old library"
    assert listing(tmp_path) == ["m.so"]


def test_a_failed_write_is_one_line(tmp_path):
    target = tmp_path / "y.npz"
    with pytest.raises(IntqError, match=r"y.npz: cannot write \(No space left on device\)"):
        with atomic_path(target):
            raise OSError(28, "No space left on device")
    assert listing(tmp_path) == []


def test_through_a_symbolic_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "r.json").write_text("old")
    (tmp_path / "link.json").symlink_to(tmp_path / "real" / "r.json")
    write_text(tmp_path / "link.json", "new")
    assert (tmp_path / "link.json").is_symlink()
    assert (tmp_path / "real" / "r.json").read_text() == "new"


@pytest.mark.parametrize(
    "name, kwargs, words",
    [
        ("in.onnx", {"inputs": [("model", "in.onnx")]}, "is also the model"),
        ("sub/x", {}, "folder sub does not exist"),
        (".", {}, "is a folder"),
        ("ro.txt", {}, "read-only"),
        ("/dev/null", {}, "not a regular file"),
        ("", {}, "empty file name"),
        ("in.onnx/x", {"create_folder": True}, "in.onnx is not a folder"),
    ],
)
def test_output_file_checks(tmp_path, monkeypatch, name, kwargs, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.onnx").write_text("model")
    (tmp_path / "ro.txt").write_text("")
    (tmp_path / "ro.txt").chmod(0o444)
    with pytest.raises(IntqError, match=words):
        check_output_file(name, "-o", **kwargs)
    assert listing(tmp_path) == ["in.onnx", "ro.txt"]


def test_output_folder_checks(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(IntqError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "f", "--out")
    with pytest.raises(IntqError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "f" / "sub", "--out")
    assert check_output_folder(tmp_path / "new" / "deeper", "--out") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checked, not created


def test_two_outputs_on_one_file(tmp_path):
    with pytest.raises(IntqError, match="r.json is also -o: give two different files"):
        check_distinct([("-o", tmp_path / "r.json"), ("--report", tmp_path / "r.json")])


def test_a_library_and_its_sidecar_land_together(tmp_path):
    """save_library: the sidecar is written before the library is renamed into place, so an
    interrupted link leaves the old pair (or a new sidecar the old library fails against:
    run refuses it), never a partial library."""
    from tvm_intq.deploy.library import save_library
    from tvm_intq.targets import get_target

    class Interrupted:
        name = "host"

        def target_dict(self):
            return get_target("host").target_dict()

        def export(self, executable, path):
            path.write_bytes(b"\x7fELF half")
            raise KeyboardInterrupt

    (tmp_path / "m.so").write_bytes(b"old")
    (tmp_path / "m.so.json").write_text("{}")
    with pytest.raises(KeyboardInterrupt):
        save_library(None, Interrupted(), tmp_path / "m.so", {"target": "host"})
    assert (tmp_path / "m.so").read_bytes() == b"old"
    assert (tmp_path / "m.so.json").read_text() == "{}"
    assert listing(tmp_path) == ["m.so", "m.so.json"]
