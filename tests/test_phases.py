"""The progress bar over a job's phases (tvm_intq/compiler/phases.py)."""

import re
import time

from tvm_intq.compiler.phases import Phases


def test_phases_record_seconds_skip_and_show_a_bar(capsys):
    with Phases(["import", "calibrate", "choose float layers", "build"], enabled=True) as p:
        p.skip("choose float layers")  # not needed: the bar counts 3 phases
        with p.phase("import"):
            time.sleep(0.01)
        with p.phase("calibrate"):
            time.sleep(0.02)
        with p.phase("build"):
            pass
    assert list(p.seconds) == ["import", "calibrate", "build"]
    assert p.seconds["calibrate"] >= 0.02
    assert re.fullmatch(
        r"import [\d.]+ s, calibrate [\d.]+ s, build [\d.]+ s \(total [\d.]+ s, CPU [\d.]+ s\)",
        p.summary(),
    )
    err = capsys.readouterr().err
    assert "compile: 3/3 phases" in err and "done" in err


def test_disabled_bar_prints_nothing_but_still_times(capsys):
    p = Phases(["a"], enabled=False)
    with p.phase("a"):
        pass
    p.close()
    assert "a" in p.seconds and capsys.readouterr().err == ""
