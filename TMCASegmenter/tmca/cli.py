"""The ``tmca`` command line: one sub-command per module in :mod:`tmca.commands`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
import warnings

from tmca import __version__
from tmca.errors import TMCAError
from tmca.runtime import let_idle_openmp_threads_sleep

# Each module defines ``add_parser(subparsers)`` and ``run(args) -> int``.
COMMANDS = ("info", "segment", "serve", "synth", "train", "evaluate", "finetune", "batch", "batch_merge")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tmca", description="Language-guided medical image segmentation (TMCA).")
    parser.add_argument("--version", action="version", version=f"tmca {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"tmca.commands.{name}")
        sub = module.add_parser(subparsers)
        sub.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
        sub.set_defaults(run=module.run)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"tmca: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    let_idle_openmp_threads_sleep()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="tmca: %(levelname)s: %(message)s")
    if not args.debug:
        warnings.showwarning = _show_warning
    try:
        return int(args.run(args) or 0)
    except TMCAError as error:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"tmca {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"tmca {args.command}: cancelled", file=sys.stderr)
        return 130
    except Exception as error:  # an internal bug: keep the message short unless --debug
        if getattr(args, "debug", False):
            raise
        print(f"tmca {args.command}: internal error: {type(error).__name__}: {error} (rerun with --debug for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
