"""The `dlrmbench` command: subcommands dispatch here; only this layer maps errors to exit codes.

Each command module exposes `add_commands(sub)` (top-level subcommands) and/or
`add_bench_targets(bench_sub)` (targets of `dlrmbench bench`), setting `func` on its parsers.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

__all__ = ["build_parser", "check_output_path", "main"]

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
    _finish(parser, ())
    return parser


class _DefaultsFormatter(argparse.HelpFormatter):
    """Appends '(default: X)' to an option's help where X says something: not None, False, '' or an
    empty list, and not where the help already speaks of its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = _shown_default(action)
        if shown is None or "default" in text.lower():
            return action.help
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


def _shown_default(action: argparse.Action) -> str | None:
    """The default as typed on the command line (a list comma-joined), %-escaped; None where not worth showing."""
    d = action.default
    if d is None or d is False or d is argparse.SUPPRESS or action.nargs == 0 or not action.option_strings:
        return None
    if isinstance(d, (str, list, tuple)) and not d:
        return None
    text = ",".join(str(x) for x in d) if isinstance(d, (list, tuple)) else str(getattr(d, "value", d))
    return text.replace("%", "%%")


class _RawDefaultsFormatter(_DefaultsFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _finish(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
    """Every parser shows its options' defaults; every leaf records its sub-command path for messages."""
    raw = issubclass(parser.formatter_class, argparse.RawDescriptionHelpFormatter)
    parser.formatter_class = _RawDefaultsFormatter if raw else _DefaultsFormatter
    for action in parser._actions:
        shown = _shown_default(action)
        if not action.help and shown is not None:  # argparse prints nothing for help-less options
            action.help = f"(default: {shown})"
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs and path:
        parser.set_defaults(command_path=" ".join(path))
    for action in subs:
        for name, child in action.choices.items():
            _finish(child, (*path, name))


def check_output_path(flag: str, path: str | os.PathLike[str], *, directory: bool = False) -> None:
    """Refuse an output path that cannot be written, before the work whose result it would hold.

    Missing parent folders are fine (the writers create them); the nearest one that exists must be a
    writable folder.

    Args:
        flag: the option the path came from, named in the error (e.g. "--json-out").
        path: the file to write or, with `directory`, the folder to write files in.
        directory: `path` is a folder, not a file.
    Raises:
        ValueError naming the flag, the path and what is wrong with it.
    """
    p = Path(path)
    if not directory and p.is_dir():
        raise ValueError(f"{flag} {path}: is a directory; give a file path")
    if directory and p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {path}: exists and is not a directory")
    folder = p.absolute() if directory else p.absolute().parent
    while not folder.exists() and folder != folder.parent:  # exists() is False under a file, too
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{flag} {path}: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {folder} is not writable")


def _os_error_text(exc: OSError) -> str:
    """'PATH: reason' when the error names its file (open, mkdir, replace), else its own message."""
    if exc.filename is None or not exc.strerror:
        return str(exc)
    return f"{exc.filename}: {exc.strerror}" + (f" (to {exc.filename2})" if exc.filename2 else "")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    where = f"dlrmbench {args.command_path}"
    try:
        return int(args.func(args) or 0)
    except (ValueError, NotImplementedError) as exc:
        print(f"{where}: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:  # an allocation no check foresaw (numpy's names its size)
        print(f"{where}: error: out of memory: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder the command reads or writes, named in the message
        print(f"{where}: error: {_os_error_text(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        code = getattr(exc, "exit_code", None)  # errors that know their exit status (e.g. a dead peer rank)
        if not isinstance(code, int):
            raise
        print(f"{where}: error: {exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
