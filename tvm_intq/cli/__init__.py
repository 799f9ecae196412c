"""``tvm-intq``: the command line. One subcommand per user verb, registered by the module that
holds it (:mod:`.model`, :mod:`.tuning`, :mod:`.boards`); the work is in the library.
Nothing here imports TVM: ``tvm-intq --help`` answers at once."""

from __future__ import annotations

import argparse
import sys

from tvm_intq.cli import boards, model, tuning
from tvm_intq.errors import IntqError

COMMANDS = {**model.COMMANDS, **tuning.COMMANDS, **boards.COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
