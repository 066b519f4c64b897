"""The quickstart's plan: the commands it runs, Criteo when the sample is there, random data otherwise."""

from __future__ import annotations

from pathlib import Path

from profiler.cli import build_parser
from profiler.quickstart import quickstart_steps


def test_steps_are_valid_dlrmbench_commands(tmp_path):
    parser = build_parser()
    for criteo in (None, tmp_path / "train.txt"):
        steps = quickstart_steps(tmp_path, "sku", criteo)
        titles = [t for t, _ in steps]
        assert [argv[0] for _, argv in steps] == ["machine", "sweep", "train", "report"]
        for _, argv in steps:
            parser.parse_args(argv)  # every step parses as the CLI would take it
        train = dict(a.split("=", 1) for a in steps[2][1] if a.startswith("--") and "=" in a)
        if criteo is None:
            assert "random data" in titles[2] and train["--arch-embedding-size"] == "100000x26"
        else:
            assert train["--raw-data-file"] == str(criteo) and train["--data-generation"] == "dataset"
        assert Path(steps[1][1][1]).name == "quickstart.toml" and Path(steps[1][1][1]).exists()
