#!/usr/bin/env python
"""Export a checkpoint's inference weights to .safetensors, the file to share a trained detector.

    python tools/export_weights.py CHECKPOINT OUT.safetensors [--weights auto|ema|model]
                                   [--trust-checkpoint]

Writes the weights evaluation uses (the EMA when the checkpoint has one, unless ``--weights``
says otherwise) and, in the file's metadata, the resolved config that rebuilds the model.
Loading a ``.safetensors`` file never runs code; every tool that takes a checkpoint takes it.
Exit status 2 with ``error: <message>`` on a user error (missing, corrupt or refused
checkpoint, unwritable output).
"""

from __future__ import annotations

import argparse
import sys

from detmine.cli import add_common_arguments, add_weights_arguments, import_tool_plugins, run_tool


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a detmine checkpoint (.pth) or a bare model state dict")
    parser.add_argument("out", help="the .safetensors file to write")
    add_weights_arguments(parser)
    add_common_arguments(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    import_tool_plugins(args)
    from detmine.engine.checkpoint import load_checkpoint
    from detmine.engine.export import export_safetensors

    out, which = export_safetensors(args.checkpoint, args.out, args.weights, trusted=args.trust_checkpoint)
    state = load_checkpoint(out)
    size_mb = out.stat().st_size / 2**20
    at = f", iteration {state['iteration']}" if state.get("iteration") is not None else ""
    config = "config embedded" if state.get("config") is not None else "no config in the checkpoint"
    print(
        f"wrote {out}: {which} weights of {args.checkpoint}{at}, {len(state['model'])} tensors, "
        f"{size_mb:.1f} MiB, {config}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
