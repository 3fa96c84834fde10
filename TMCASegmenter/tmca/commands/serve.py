"""``tmca serve --stdio``: the warm engine (model loaded once; requests on stdin, events on stdout)."""

from __future__ import annotations

import argparse

from tmca.commands.arguments import add_backend, add_device
from tmca.errors import TMCAError


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve",
        help="keep the model loaded and answer JSON requests (segment, refine) one per line",
        description="The warm engine: one JSON request per line on stdin, JSON events on stdout "
                    "(docs/ENGINE_PROTOCOL.md). Ends on a shutdown request or at the end of stdin.",
    )
    parser.add_argument("--stdio", action="store_true", required=True, help="requests on stdin, events on stdout")
    parser.add_argument("--model", help="checkpoint folder (default: the bundled demo model)")
    add_device(parser)
    parser.add_argument("--batch-size", type=int, help="slices per forward pass (default 16 on CPU, 64 on GPU)")
    add_backend(parser)
    parser.add_argument("--max-results", type=int, default=8, help="results kept for refine (default 8; least recently used go first)")
    parser.add_argument("--max-volumes", type=int, default=2, help="loaded volumes kept (default 2)")
    parser.add_argument("--feature-cache-mb", type=int, default=1024,
                        help="MB of image-encoder features kept, so another report on a kept volume runs the decoder only "
                             "(default 1024; a 512-slice volume of the demo model takes about 220 MB; 0: none)")
    return parser


def run(args: argparse.Namespace) -> int:
    from tmca.server import serve_stdio

    for option, value in (("--max-results", args.max_results), ("--max-volumes", args.max_volumes)):
        if value < 1:
            raise TMCAError(f"{option} must be at least 1, not {value}")
    return serve_stdio(args.model, args.device, args.batch_size, args.backend, args.max_results, args.max_volumes, args.feature_cache_mb)
