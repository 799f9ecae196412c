"""TVM's own warnings kept out of the user's terminal.

TVM's C++ logger writes its warnings straight to file descriptor 2 ("Fast mode segfaults when
there are out-of-bounds indices", "BlockBuilder destroyed with remaining blocks!", one per
kernel or per failed attempt): a search that builds a few models printed hundreds of them.
They say nothing a user of tvm-intq can act on. :func:`quiet_tvm` sends descriptor 2 to a
temporary file while TVM works and writes back every line that is not such a warning.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager, redirect_stdout

#: ``[04:50:02] /project/include/tvm/topi/transform.h:1261: Warning: ...``
TVM_WARNING = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+:\d+: Warning: ")


@contextmanager
def quiet_tvm():
    """Within: TVM's warnings dropped, anything else written to stderr kept (after), and
    whatever TVM's Python side prints to stdout (its frontends' "Error converting operator"
    dumps, which the error we raise says in one line) dropped."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (captured): nothing to do
        fd = None
    if fd is None:
        with redirect_stdout(open(os.devnull, "w")):  # noqa: SIM115 - closed with the process
            yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            with open(os.devnull, "w") as null, redirect_stdout(null):
                yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            kept = [
                line
                for line in tmp.read().decode(errors="replace").splitlines(keepends=True)
                if not TVM_WARNING.match(line)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
