"""The dlrmbench command line: reference flags, presets, kernels, JSON output and error messages."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import psutil
import pytest
import torch

from profiler.cli import build_parser, main

_LINE = re.compile(r"^Finished training it (\d+)/(\d+) of epoch 0, (-?\d+\.\d\d) ms/it, loss (\d+\.\d{6})$", re.M)


def test_train_prints_reference_lines_and_writes_json(tmp_path, capsys):
    out = tmp_path / "run.json"
    argv = ["train", "--preset=tiny", "--data-size=40", "--mini-batch-size=8", "--print-time", f"--json-out={out}"]
    assert main(argv) == 0
    lines = _LINE.findall(capsys.readouterr().out)
    assert [(int(a), int(b)) for a, b, _, _ in lines] == [(i, 5) for i in range(1, 6)]
    assert all(float(ms) > 0 for _, _, ms, _ in lines)
    record = json.loads(out.read_text())
    for key in ("samples_per_s", "step_samples_per_s", "ms_per_iter", "train_loss", "kernel", "device", "config"):
        assert key in record
    assert [round(x, 6) for x in record["train_loss"]] == [float(loss) for *_, loss in lines]
    assert record["kernel"] == "torch" and record["device"] == "cpu"
    assert record["versions"]["torch"] == torch.__version__
    assert record["config"]["top_mlp_input"] == 4 * 3 // 2 + 4  # tiny: T=3, D=4
    assert record["samples"] == 40


def test_reference_defaults_and_boolean_forms():
    parse = build_parser().parse_args
    a = parse(["train"])
    assert (a.arch_sparse_feature_size, a.arch_embedding_size, a.learning_rate, a.loss_function) == (
        None, None, 0.01, "bce",
    )  # fmt: skip
    assert parse(["train", "--num-indices-per-lookup-fixed"]).num_indices_per_lookup_fixed is True
    assert parse(["train", "--num-indices-per-lookup-fixed=True"]).num_indices_per_lookup_fixed is True
    assert parse(["train", "--num-indices-per-lookup-fixed=False"]).num_indices_per_lookup_fixed is False
    assert parse(["train", "--arch-interaction-itself", "--print-time=True"]).arch_interaction_itself is True
    with pytest.raises(SystemExit):
        parse(["train", "--inference-only=maybe"])


def test_help_states_bce_default():
    proc = subprocess.run([sys.executable, "-m", "profiler.cli", "train", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "defaults to mse" in " ".join(proc.stdout.split())


def test_help_shows_each_default_once_as_typed(capsys):
    def text(*command):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        return " ".join(capsys.readouterr().out.split())

    dump = text("trace", "dump")
    assert "--on-bad-line {error,skip} (default: error)" in dump  # an option without help text still shows it
    assert "--processed-data-file PROCESSED_DATA_FILE cache folder (as for train) --on" in dump  # '' is no default
    bag = text("bench", "embedding-bag")
    assert "--embedding-dim EMBEDDING_DIM D (default: 64)" in bag  # the parsed list [64], shown as typed
    assert "--index-dtype INDEX_DTYPE int64,int32 (default: int64)" in bag
    assert "--huge-pages HUGE_PAGES table on transparent huge pages: on,off (default: off)" in bag  # typeable
    assert "--backward time forward + backward + SGD update --" in bag  # a flag: no default
    train = text("train")
    assert "--nepochs NEPOCHS (default: 1)" in train
    assert "embedding dim D (default 2) --" in train  # its help already says it: not twice
    assert "--data-shuffle [BOOL] visit the training batches in a new order each epoch --" in train


def test_errors_name_the_sub_command(tmp_path, capsys):
    assert main(["trace", "generate", str(tmp_path / "none.log"), "--rows=5", "--count=5", f"--out={tmp_path}/t"]) == 2
    assert capsys.readouterr().err.startswith("dlrmbench trace generate: error: ")


def test_reference_architecture_flags(tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["train", "--arch-sparse-feature-size=8", "--arch-embedding-size=30-20-10-5", "--arch-mlp-bot=7-16-8",
            "--arch-mlp-top=12-1", "--arch-interaction-op=dot", "--arch-interaction-itself=True",
            "--num-indices-per-lookup=3", "--num-indices-per-lookup-fixed=True", "--mini-batch-size=4",
            "--num-batches=3", "--learning-rate=0.5", "--loss-function=mse", "--kernel=torch_naive",
            f"--json-out={out}"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads(out.read_text())
    cfg = record["config"]
    assert cfg["table_rows"] == [30, 20, 10, 5] and cfg["bottom_mlp"] == [7, 16, 8]
    assert cfg["top_mlp_input"] == 5 * 6 // 2 + 8  # n = 5 vectors, with self terms
    assert cfg["kernel"] == "torch_naive"
    assert record["pooling_factor"] == 3  # random data: the flag's L
    text = capsys.readouterr().out
    assert "3 it" in text and "L=3 fixed, kernel torch_naive" in text


def test_cat_interaction_and_inference_only(tmp_path):
    out = tmp_path / "i.json"
    argv = ["train", "--preset=tiny", "--arch-interaction-op=cat", "--inference-only", "--data-size=16",
            "--mini-batch-size=8", f"--json-out={out}"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads(out.read_text())
    assert record["mode"] == "inference" and record["config"]["top_mlp_input"] == 4 * 4


def test_save_then_load_model(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    base = ["train", "--preset=tiny", "--data-size=16", "--mini-batch-size=8"]
    assert main([*base, f"--save-model={ckpt}"]) == 0
    assert main([*base, f"--load-model={ckpt}", "--inference-only"]) == 0
    assert f"loaded model from {ckpt}" in capsys.readouterr().out
    assert main([*base, f"--load-model={ckpt}", "--arch-mlp-bot=5-8-4", "--arch-sparse-feature-size=4",
                 "--arch-embedding-size=9-9-9"]) == 2  # fmt: skip
    assert "holds a different architecture" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset=nope"], "unknown preset 'nope'; presets: tiny, demo"),
        (["--arch-embedding-size=10-x"], "--arch-embedding-size: 'x' in '10-x' is not an integer"),
        (["--arch-mlp-bot=4-3-5"], "--arch-mlp-bot ends in 5 but --arch-sparse-feature-size is 2"),
        (["--arch-mlp-top=4-2"], "--arch-mlp-top must end in 1"),
        (["--kernel=fast"], "--kernel: unknown kernel 'fast'; registered kernels: torch, torch_naive"),
        (["--data-generation=dataset"], "--data-generation dataset needs --raw-data-file"),
        (["--scale=0.5"], "--scale must be >= 1"),
    ],
)
def test_bad_flags_give_clear_errors(argv, message, capsys):
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present, so --use-gpu is valid")
def test_use_gpu_without_gpu_is_a_clear_error(capsys):
    assert main(["train", "--use-gpu"]) == 2
    assert "no CUDA device is visible" in capsys.readouterr().err


@pytest.mark.skipif(psutil.virtual_memory().available > 150 * 2**30, reason="this machine could hold mlperf's tables")
def test_too_large_preset_is_refused_with_a_scale_hint(capsys):
    assert main(["train", "--preset=mlperf"]) == 2
    assert re.search(r"need \d+\.\d\d GiB .* --scale \d+", capsys.readouterr().err)


def test_scaled_preset_says_so(capsys):
    assert main(["train", "--preset=rm2", "--scale=1000", "--num-batches=1", "--mini-batch-size=4"]) == 0
    out = capsys.readouterr().out
    assert "scaled down: table rows divided by 1000" in out and "rows 16,000 " in out


def test_presets_and_kernels_listings(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("tiny", "demo", "kaggle", "rm1", "rm2", "rm3", "mlperf"):
        assert re.search(rf"^{name}\s+\d+", out, re.M)
    assert main(["kernels"]) == 0
    assert re.search(r"^torch\s+torch\s+cpu,cuda\s+yes", capsys.readouterr().out, re.M)


def test_profile_prints_a_breakdown_and_writes_a_trace(tmp_path, capsys):
    trace = tmp_path / "t.json"
    out = tmp_path / "p.json"
    argv = ["train", "--preset=tiny", "--data-size=16", "--mini-batch-size=8", "--profile",
            f"--profile-trace={trace}", f"--json-out={out}"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    for part in ("embedding_fwd", "embedding_bwd", "top_mlp_bwd", "optimizer", "other"):
        assert re.search(rf"^{part}\s+\d+\.\d+", text, re.M)
    assert json.loads(trace.read_text())["traceEvents"]
    parts = json.loads(out.read_text())["breakdown"]["parts_s"]
    assert set(parts) >= {"embedding_fwd", "interaction_bwd", "optimizer", "other"}


def test_adagrad_optimizer_trains_and_refuses_fused_updates(tmp_path, capsys):
    out = tmp_path / "a.json"
    base = ["train", "--preset=tiny", "--data-size=32", "--mini-batch-size=8", "--optimizer=adagrad"]
    assert main([*base, f"--json-out={out}"]) == 0
    assert len(json.loads(out.read_text())["train_loss"]) == 4
    assert main([*base, "--embedding-grad=fused"]) == 2
    assert "fused updates are SGD only" in capsys.readouterr().err


@pytest.mark.filterwarnings("error::UserWarning")  # torch warned about implicit sparse invariant checks
def test_bench_dlrm_runs_each_optimizer_beside_the_reference_style(tmp_path, capsys):
    small = ["bench", "dlrm", "--arch-embedding-size=500x3", "--arch-mlp-bot=13-8-4", "--arch-sparse-feature-size=4",
             "--arch-mlp-top=8-1", "--batch-size=32", "--steps=3", "--warmup=1",
             "--kernels=torch,torch_naive"]  # fmt: skip
    out = tmp_path / "b.json"
    assert main([*small, "--optimizer=adagrad", "--reference-style", f"--json-out={out}"]) == 0
    records = json.loads(out.read_text())["records"]
    assert [r["kernel"] for r in records] == ["reference-style", "torch", "torch_naive"]
    assert {r["optimizer"] for r in records} == {"adagrad"} and all(len(r["step"]["samples_s"]) == 3 for r in records)
    assert main([*small, "--optimizer=rwsadagrad", "--reference-style"]) == 2
    assert "compare against it with scripts/vs_reference.py" in capsys.readouterr().err
    assert main([*small, "--optimizer=adagrad", "--embedding-grad=fused"]) == 2
    assert "fused updates are SGD only" in capsys.readouterr().err


def test_bench_dlrm_interrupted_keeps_the_batch_sizes_it_finished(tmp_path, monkeypatch, capsys):
    from model.data import RandomData

    build = RandomData.batch

    def ctrl_c_at_64(self, i):
        if self.batch_size == 64:
            raise KeyboardInterrupt
        return build(self, i)

    monkeypatch.setattr(RandomData, "batch", ctrl_c_at_64)
    out = tmp_path / "b.json"
    argv = ["bench", "dlrm", "--arch-embedding-size=500x3", "--arch-mlp-bot=13-8-4", "--arch-sparse-feature-size=4",
            "--arch-mlp-top=8-1", "--batch-size=32,64,128", "--steps=2", "--warmup=1", "--kernels=torch",
            f"--json-out={out}"]  # fmt: skip
    assert main(argv) == 130
    kept = json.loads(out.read_text())
    assert kept["interrupted"] is True and [r["batch_size"] for r in kept["records"]] == [32]
    assert f"wrote the batch sizes measured (32) to {out}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "dlrm", "--embedding-grad", "spares"],
         "argument --embedding-grad: invalid choice: 'spares' (choose from 'sparse', 'dense', 'fused')"),
        (["bench", "dlrm", "--embedding-grad", "sparse,fussed"],
         "argument --embedding-grad: invalid choice: 'fussed' (choose from 'sparse', 'dense', 'fused')"),
        (["bench", "dlrm", "--batch-size", "128,2k"], "argument --batch-size/--mini-batch-size: '2k' is not a number"),
        (["bench", "dlrm", "--mini-batch-size", "128.5"],
         "argument --batch-size/--mini-batch-size: '128.5' is not a whole number >= 1"),
        (["bench", "dist", "--nprocs", "1,two"], "argument --nprocs: 'two' is not a number"),
        (["bench", "dist", "--nprocs", "1,0"], "argument --nprocs: '0' is not a whole number >= 1"),
        (["bench", "embedding-bag", "--threads", "2,x"], "argument --threads: 'x' is not a number"),
        (["bench", "embedding-bag", "--index-dtype", "int16"],
         "argument --index-dtype: invalid choice: 'int16' (choose from 'int64', 'int32')"),
    ],
)  # fmt: skip
def test_bench_list_flags_name_the_flag_and_the_bad_item(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "EmbeddingGrad" not in err


def test_bench_list_flags_parse_to_lists():
    parse = build_parser().parse_args
    a = parse(["bench", "dlrm"])
    assert (a.kernels, a.batch_size, a.embedding_grad) == (["torch", "torch_naive"], [128, 2048], ["sparse"])
    a = parse(["bench", "dlrm", "--kernels=torch, numba_w8", "--batch-size=1e3,64", "--embedding-grad=dense,fused"])
    assert (a.kernels, a.batch_size, a.embedding_grad) == (["torch", "numba_w8"], [1000, 64], ["dense", "fused"])
    assert parse(["bench", "dist"]).nprocs == [1, 2, 4]
    assert parse(["bench", "dist", "--nprocs=1,2"]).nprocs == [1, 2]


def test_bench_dlrm_unknown_kernel_names_the_flag_before_timing(capsys):
    assert main(["bench", "dlrm", "--kernels=torch,nope", "--arch-embedding-size=10x3", "--steps=1"]) == 2
    out, err = capsys.readouterr()
    assert "--kernels: unknown kernel 'nope'; registered kernels: torch, torch_naive" in err
    assert "DLRM training step" not in out
