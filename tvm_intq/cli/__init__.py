"""``tvm-intq``: the command line. One subcommand per user verb, registered by the module that
holds it (:mod:`.model`, :mod:`.tuning`, :mod:`.boards`); the work is in the library.
Nothing here imports TVM: ``tvm-intq --help`` answers at once."""

from __future__ import annotations

import argparse
import sys

from tvm_intq.cli import boards, model, tuning
from tvm_intq.errors import IntqError

COMMANDS = {**model.COMMANDS, **tuning.COMMANDS, **boards.COMMANDS}


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line like every other error (the full usage is one
    ``--help`` away). Subcommand parsers are of this class too."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tvm-intq", description="Int8 post-training quantization and deployment for Apache TVM"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for verbs in (model, tuning, boards):
        verbs.add_parsers(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except IntqError as err:
        print(f"tvm-intq: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tvm-intq: interrupted", file=sys.stderr)
        return 130
