"""`dlrmbench kernels`: every registered embedding-bag kernel and whether it runs here."""

from __future__ import annotations

import argparse

from kernels.registry import list_kernels

__all__ = ["add_commands"]


def _cmd_kernels(args: argparse.Namespace) -> int:
    print(f"{'kernel':<14} {'backend':<8} {'devices':<10} {'available':<10} notes")
    for e in list_kernels():
        note = e.description if e.available else e.reason
        devices = ",".join(e.devices) or "-"
        print(f"{e.name:<14} {e.backend:<8} {devices:<10} {'yes' if e.available else 'no':<10} {note}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("kernels", help="list embedding-bag kernels and whether they run here").set_defaults(
        func=_cmd_kernels
    )
