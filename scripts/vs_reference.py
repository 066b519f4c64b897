"""Side by side with the reference DLRM (facebookresearch/dlrm, dlrm_s_pytorch.py), same flags, alternating.

    python scripts/vs_reference.py --reference-dir PATH [--batch-sizes 128,2048] [--rounds 3]

Runs the reference and `dlrmbench train` with the same command-line flags (the Kaggle shape
with 100,000 rows per table, random data, the issue's benchmark), one after the other, for
`--rounds` rounds, so drift of this shared host hits both alike. From each run it takes the
ms/it of the last print window (both print per window, both exclude data generation; ours
also warms its compiled kernels on a throwaway 4-row model before timing, the reference has no
such kernels) and prints the medians and their ratio. The reference is not part of this
repository: pass a checkout (its module-level imports need mlperf_logging, sklearn and
tensorboard; stubs are fine, they are used only by options this benchmark does not pass).
Relative --reference-dir and --extra-pythonpath are taken from the current folder (the reference
itself runs in its own). Every flag is checked, kernel names against the registry, before any run.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from kernels import get as get_kernel
from profiler.bench_bag_cli import parse_int_list, parse_list, parse_positive_int

OPTIMIZERS = ("sgd", "adagrad", "rwsadagrad")  # the reference's `opts` table; dlrmbench train takes the same
FLAGS = [
    "--arch-sparse-feature-size=16",
    "--arch-mlp-bot=13-512-256-64-16",
    "--arch-mlp-top=512-256-1",
    "--arch-embedding-size=" + "-".join(["100000"] * 26),
    "--data-generation=random",
    "--loss-function=bce",
    "--round-targets=True",
    "--learning-rate=0.1",
    "--num-indices-per-lookup=10",
    "--print-time",
]
LINE = re.compile(r"Finished training it (\d+)/(\d+) of epoch \d+, ([\d.]+) ms/it")


def last_window_ms(out: str, what: str) -> float:
    found = LINE.findall(out)
    if not found:
        raise SystemExit(f"{what}: no 'Finished training ... ms/it' line in its output:\n{out[-2000:]}")
    return float(found[-1][2])


def absolute_folder(flag: str, text: str) -> str:
    """`text` made absolute against this process's current folder (the reference runs in its own)."""
    path = Path(text).expanduser().absolute()
    if not path.is_dir():
        raise ValueError(f"{flag} {text}: no such folder (from {Path.cwd()})")
    return str(path)


def run(cmd: list[str], cwd: str | None, env: dict[str, str], what: str) -> float:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{what} failed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return last_window_ms(p.stdout + p.stderr, what)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-dir", required=True, help="folder holding dlrm_s_pytorch.py")
    ap.add_argument(
        "--batch-sizes", type=parse_int_list, default=[128, 2048], help="comma-separated (default 128,2048)"
    )
    ap.add_argument("--rounds", type=parse_positive_int, default=3, help="(default 3)")
    ap.add_argument("--threads", type=parse_positive_int, default=2, help="torch threads of both (default 2)")
    ap.add_argument(
        "--kernels",
        type=parse_list,
        default=["torch", "torch_naive"],
        help="dlrmbench --kernel values (default torch,torch_naive)",
    )
    ap.add_argument("--extra-pythonpath", default="", help="folders for the reference's PYTHONPATH, e.g. its stubs")
    ap.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="passed to both (default sgd)")
    args = ap.parse_args()
    # The reference runs with its own folder as working directory: relative paths must be made absolute here.
    try:
        ref = Path(absolute_folder("--reference-dir", args.reference_dir))
        extra = [absolute_folder("--extra-pythonpath", p) for p in args.extra_pythonpath.split(os.pathsep) if p]
    except ValueError as exc:
        ap.error(str(exc))
    if not (ref / "dlrm_s_pytorch.py").is_file():
        ap.error(f"--reference-dir {args.reference_dir}: no dlrm_s_pytorch.py in {ref}")
    kernels = args.kernels
    for k in kernels:
        try:
            get_kernel(k, "cpu")  # dlrmbench train runs on the CPU here, as the reference does
        except ValueError as exc:
            ap.error(f"--kernels: {exc}")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    ref_env = dict(env, PYTHONPATH=os.pathsep.join([str(ref), *extra]))
    ours_bin = Path(sys.executable).with_name("dlrmbench")
    print(f"{'B':>5} {'round':>5} {'reference':>10}" + "".join(f" {k:>12}" for k in kernels) + "   (ms/it)")
    summary = []
    for B in args.batch_sizes:
        n = 60 if B <= 256 else 16
        common = [*FLAGS, f"--mini-batch-size={B}", f"--num-batches={n}", f"--print-freq={n // 2}",
                  f"--optimizer={args.optimizer}"]  # fmt: skip
        refs: list[float] = []
        ours: dict[str, list[float]] = {k: [] for k in kernels}
        for r in range(args.rounds):
            refs.append(run([sys.executable, "dlrm_s_pytorch.py", *common], str(ref), ref_env, "reference"))
            for k in kernels:
                cmd = [str(ours_bin), "train", *common, f"--threads={args.threads}", f"--kernel={k}"]
                ours[k].append(run(cmd, None, env, f"dlrmbench --kernel {k}"))
            print(f"{B:5d} {r + 1:5d} {refs[-1]:10.2f}" + "".join(f" {ours[k][-1]:12.2f}" for k in kernels), flush=True)
        summary.append((B, statistics.median(refs), {k: statistics.median(v) for k, v in ours.items()}))
    print("\nmedians of the last print window (ms/it, step time as each prints it):")
    for B, r, o in summary:
        parts = ", ".join(f"{k} {v:.2f} ({r / v:.2f}x)" for k, v in o.items())
        print(f"  B={B:5d}  reference {r:.2f}; dlrmbench {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
