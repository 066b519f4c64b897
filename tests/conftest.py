"""Tests that press Ctrl-C (a SIGINT to this process) need Python's own handler, whatever pytest started with:
a script's `cmd &` starts it with SIGINT ignored, which the trainer then keeps ignoring."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _python_sigint_handler() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
