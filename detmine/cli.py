"""What every command-line tool does around its work: ``--version``, user errors as one line,
exit codes.

Imports nothing heavy (no torch), so a tool can report a config error (or its version) instantly.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Callable

import detmine
from detmine.errors import DetmineError


def version_string() -> str:
    """``detmine X (torch Y)``, torch's version read from its installed metadata (no import, so
    without a build tag such as ``+cu130``: ``python -m detmine.env`` shows that)."""
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "not installed"
    return f"detmine {detmine.__version__} (torch {torch_version})"


def add_version_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--version`` (prints :func:`version_string` and exits 0) to a tool's parser; returns it."""
    parser.add_argument(
        "--version",
        action="version",
        version=version_string(),
        help="print the detmine and torch versions and exit",
    )
    return parser


def add_common_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """What every tool takes: ``--version`` and ``--plugin`` (repeatable: a module or a ``.py``
    file imported before the config is checked, so its components can be named; saved with a
    training run's config)."""
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help="import a module or .py file that registers components (miners, losses, hooks ...); repeatable",
    )
    return add_version_argument(parser)


def import_tool_plugins(args: argparse.Namespace) -> None:
    """Import ``--plugin`` for a tool that loads no config (the others pass them to ``load_config``)."""
    from detmine.plugins import import_plugins

    import_plugins(getattr(args, "plugin", None) or [])


TRUST_HELP = (
    "load a checkpoint that needs the full unpickler (it can run code: only files you trust, "
    "e.g. your own from detmine 0.1)"
)


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments every tool over a trained detector shares: ``config``, ``checkpoint``,
    ``--weights``, ``--device``, ``--trust-checkpoint``, ``--plugin`` and ``--version``."""
    parser.add_argument("config", help="recipe YAML (configs/*.yaml) or a run's config.yaml")
    parser.add_argument(
        "checkpoint", help="a detmine checkpoint (.pth), an exported .safetensors or a bare model state dict"
    )
    add_weights_arguments(parser)
    parser.add_argument(
        "--device", default=None, choices=("auto", "cpu", "cuda"), help="default: train.device"
    )
    return add_common_arguments(parser)


def add_weights_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--weights`` (auto / ema / model) and ``--trust-checkpoint``: how a tool reads a
    checkpoint it is given; returns the parser."""
    parser.add_argument(
        "--weights",
        default="auto",
        choices=("auto", "ema", "model"),
        help="which weights of the checkpoint: the EMA when it has one (auto), or the raw model",
    )
    parser.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    return parser


def add_overrides_argument(parser: argparse.ArgumentParser, example: str) -> argparse.ArgumentParser:
    """Dotted config overrides, accepted anywhere on the command line (parse with
    ``parser.parse_intermixed_args``)."""
    parser.add_argument("overrides", nargs="*", help=f"config overrides key.sub=value, e.g. {example}")
    return parser


def run_tool(
    run: Callable[[argparse.Namespace], int], args: argparse.Namespace, *, interrupt_hint: str = ""
) -> int:
    """Call ``run(args)``; a :class:`DetmineError` prints ``error: <message>`` and gives exit 2,
    Ctrl-C prints ``interrupted`` (plus ``interrupt_hint``) and gives exit 130."""
    try:
        return run(args)
    except DetmineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted{'; ' + interrupt_hint if interrupt_hint else ''}", file=sys.stderr)
        return 130
