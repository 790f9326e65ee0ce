"""A plugin module that adds a ``hello`` command to the ``bananas`` command line."""

from __future__ import annotations

import argparse
from typing import Any

from bananas_core import Settings, hookimpl


def hello(settings: Settings, args: argparse.Namespace) -> int:
    print(f"hello {args.who} from queue {settings.QUEUE}")
    return 7


@hookimpl
def bananas_cli_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser("hello", help="greet someone")
    parser.add_argument("who")
    parser.set_defaults(handler=hello)
