"""The `dlrmbench` command: subcommands dispatch here; only this layer maps errors to exit codes.

Each command module exposes `add_commands(sub)` (top-level subcommands) and/or
`add_bench_targets(bench_sub)` (targets of `dlrmbench bench`), setting `func` on its parsers.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["build_parser", "main"]

# Modules that add subcommands; each is imported when the parser is built.
_COMMAND_MODULES: tuple[str, ...] = (
    "model.cli",
    "model.bench",
    "model.bench_dist",
    "kernels.cli",
    "profiler.machine_cli",
    "profiler.sweep_cli",
    "profiler.plots",
    "profiler.compare",
    "profiler.report",
    "profiler.quickstart",
    "profiler.bench_bag_cli",
    "profiler.bench_timer",
    "model.trace_cli",
    "model.quality_cli",
    "model.baseline_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dlrmbench",
        description="DLRM hardware-software co-design workbench: train DLRM with swappable "
        "embedding-bag kernels and profile them against the machine's limits.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench = sub.add_parser("bench", help="benchmarks that print a table and write JSON")
    bench_sub = bench.add_subparsers(dest="target", required=True, metavar="TARGET")
    for name in _COMMAND_MODULES:
        module = importlib.import_module(name)
        if hasattr(module, "add_commands"):
            module.add_commands(sub)
        if hasattr(module, "add_bench_targets"):
            module.add_bench_targets(bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, NotImplementedError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"dlrmbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        code = getattr(exc, "exit_code", None)  # errors that know their exit status (e.g. a dead peer rank)
        if not isinstance(code, int):
            raise
        print(f"dlrmbench {args.command}: error: {exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print(f"dlrmbench {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
