"""The `dlrmbench` command: subcommands dispatch here; only this layer maps errors to exit codes."""

from __future__ import annotations

import argparse
import sys

__all__ = ["build_parser", "main"]


def _cmd_train(args: argparse.Namespace) -> int:
    from model.cli import train_main

    train_main(args)
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from model.cli import print_presets

    print_presets()
    return 0


def _cmd_kernels(args: argparse.Namespace) -> int:
    import kernels

    rows = kernels.list_kernels()
    print(f"{'kernel':<14} {'backend':<8} {'devices':<10} {'available':<10} notes")
    for e in rows:
        note = e.description if e.available else e.reason
        print(
            f"{e.name:<14} {e.backend:<8} {','.join(e.devices) or '-':<10} {'yes' if e.available else 'no':<10} {note}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from model.cli import add_train_arguments

    parser = argparse.ArgumentParser(
        prog="dlrmbench",
        description="DLRM hardware-software co-design workbench: train DLRM with swappable "
        "embedding-bag kernels and profile them against the machine's limits.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "train",
        help="train or run inference on DLRM (the reference's flags)",
        description="Train DLRM (Naumov et al. 2019). Flags follow the reference "
        "dlrm_s_pytorch.py; --loss-function defaults to bce (the reference's default is mse).",
    )
    add_train_arguments(p)
    p.set_defaults(func=_cmd_train)
    sub.add_parser("presets", help="list named model configurations").set_defaults(func=_cmd_presets)
    sub.add_parser("kernels", help="list embedding-bag kernels and whether they run here").set_defaults(
        func=_cmd_kernels
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, NotImplementedError, FileNotFoundError) as exc:
        print(f"dlrmbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dlrmbench {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
