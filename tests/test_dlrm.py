"""DLRM forward against a loop-by-loop NumPy implementation written here; training and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.config import DLRMConfig, EmbeddingGrad, Interaction
from model.data import RandomData
from model.dlrm import DLRM
from model.train import TrainConfig, load_checkpoint, run, save_checkpoint


def _numpy_dlrm(model: DLRM, dense, indices, offsets) -> np.ndarray:
    """Straight from the paper, with explicit loops; shares nothing with model/ but the weights."""
    cfg = model.config
    B, T, D = dense.shape[0], cfg.num_tables, cfg.embedding_dim

    def mlp(seq, x, sigmoid_last):
        linears = [m for m in seq if isinstance(m, torch.nn.Linear)]
        for k, lin in enumerate(linears):
            x = x @ lin.weight.detach().numpy().T + lin.bias.detach().numpy()
            x = 1 / (1 + np.exp(-x)) if (sigmoid_last and k == len(linears) - 1) else np.maximum(x, 0)
        return x

    x = mlp(model.bottom, dense.numpy().astype(np.float64), False)  # (B, D)
    table_weights, start = [], 0
    W = model.embeddings.weight.detach().numpy().astype(np.float64)
    for rows in cfg.table_rows:
        table_weights.append(W[start : start + rows])
        start += rows
    pooled = np.zeros((T, B, D))
    for t in range(T):
        for b in range(B):
            lo, hi = int(offsets[t * B + b]), int(offsets[t * B + b + 1])
            for i in range(lo, hi):
                pooled[t, b] += table_weights[t][int(indices[i])]
    rows_out = []
    for b in range(B):
        vecs = [x[b]] + [pooled[t, b] for t in range(T)]
        if cfg.interaction == Interaction.CAT:
            rows_out.append(np.concatenate(vecs))
            continue
        feats = [x[b]]
        pairs = []
        for i in range(len(vecs)):
            for j in range(i + 1 if cfg.interaction_itself else i):
                pairs.append(float(np.dot(vecs[i], vecs[j])))
        feats.append(np.array(pairs))
        rows_out.append(np.concatenate(feats))
    z = np.stack(rows_out)
    return mlp(model.top, z, True)[:, 0]


@pytest.mark.parametrize(
    ("op", "itself"), [(Interaction.DOT, False), (Interaction.DOT, True), (Interaction.CAT, False)]
)
@pytest.mark.parametrize("kernel", ["torch", "torch_naive"])
def test_forward_equals_numpy_loops(op, itself, kernel):
    cfg = DLRMConfig(3, (5, 1, 4), (4, 6, 3), (7, 1), op, itself, kernel)
    model = DLRM(cfg, torch.Generator().manual_seed(3))
    # T=3, B=4; table 1 has a single row; some bags empty.
    data = RandomData(cfg.table_rows, 4, 4, 4, pooling_factor=3, seed=9)
    batch = data.batch(0)
    offsets = batch.offsets.clone()
    got = model(batch.dense, batch.indices, offsets).detach().numpy()
    want = _numpy_dlrm(model, batch.dense, batch.indices, offsets)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_interaction_width_matches_reference_formula():
    # n = T + 1 vectors; dot: n(n-1)/2 pairs (+ n with self terms) + D; cat: n * D
    cfg = DLRMConfig(16, (10,) * 26, (13, 512, 256, 64, 16), (512, 256, 1))
    assert cfg.interaction_width == 27 * 26 // 2 + 16 == 367
    assert DLRMConfig(16, (10,) * 26, (13, 16), (1,), Interaction.DOT, True).interaction_width == 27 * 28 // 2 + 16
    assert DLRMConfig(16, (10,) * 26, (13, 16), (1,), Interaction.CAT).interaction_width == 27 * 16


def test_inconsistent_sizes_are_rejected_with_the_numbers():
    with pytest.raises(ValueError, match="--arch-mlp-bot ends in 8 but --arch-sparse-feature-size is 16"):
        DLRMConfig(16, (10,), (13, 8), (1,)).validate()
    model = DLRM(DLRMConfig(2, (4, 3), (4, 2), (1,)))
    batch = RandomData((4, 3), 13, 2, 2).batch(0)
    with pytest.raises(ValueError, match=r"dense features have shape \(2, 13\) but --arch-mlp-bot starts with 4"):
        model(batch.dense, batch.indices, batch.offsets)


def _train(kernel: str, tmp_path=None, **kw):
    cfg = DLRMConfig(4, (50, 7, 30, 1), (6, 8, 4), (16, 1), kernel=kernel)
    data = RandomData(cfg.table_rows, 6, 8, 64, pooling_factor=4, seed=5)
    train = TrainConfig(learning_rate=0.1, seed=7, **kw)
    return cfg, data, run(cfg, train, data, log=lambda s: None)


def test_torch_and_naive_kernels_train_identically():
    _, _, a = _train("torch")
    _, _, b = _train("torch_naive")
    assert len(a["train_loss"]) == 8
    np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)
    # training moved the loss: not the same number eight times
    assert len(set(np.round(a["train_loss"], 6))) > 1


@pytest.mark.parametrize("grad", [EmbeddingGrad.DENSE, EmbeddingGrad.FUSED])
@pytest.mark.parametrize("kernel", ["torch", "torch_naive"])
def test_dense_and_fused_embedding_updates_train_like_sparse(grad, kernel):
    from dataclasses import replace

    cfg, data, sparse = _train("torch")
    other = run(replace(cfg, embedding_grad=grad, kernel=kernel), TrainConfig(learning_rate=0.1, seed=7), data,
                log=lambda s: None)  # fmt: skip
    np.testing.assert_allclose(sparse["train_loss"], other["train_loss"], rtol=1e-5)


def test_save_load_round_trip_gives_identical_predictions(tmp_path):
    cfg = DLRMConfig(4, (20, 9), (6, 5, 4), (8, 1), Interaction.DOT, True)
    model = DLRM(cfg, torch.Generator().manual_seed(11))
    path = tmp_path / "m.pt"
    save_checkpoint(model, path)
    ckpt = load_checkpoint(path, torch.device("cpu"))
    loaded = DLRM(DLRMConfig.from_dict(ckpt["config"]))
    loaded.load_state_dict(ckpt["state_dict"])
    batch = RandomData(cfg.table_rows, 6, 16, 16, seed=2).batch(0)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(batch.dense, batch.indices, batch.offsets),
            model(batch.dense, batch.indices, batch.offsets),
            rtol=0,
            atol=0,
        )


def test_checkpoint_loading_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "evil.pt"
    torch.save({"version": 1, "x": Evil()}, path)
    with pytest.raises(Exception, match=r"(?i)weights_only|unsupported"):
        load_checkpoint(path, torch.device("cpu"))


@pytest.mark.parametrize("itself", [False, True])
def test_dot_interaction_gradient(itself):
    from model.dlrm import interact

    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    ly = torch.randn(2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    rows, cols = torch.tril_indices(3, 3, offset=0 if itself else -1)
    pairs = rows * 3 + cols
    assert torch.autograd.gradcheck(lambda a, b: interact(a, b, Interaction.DOT, pairs), (x, ly))


@pytest.mark.parametrize(
    ("op", "itself"), [(Interaction.DOT, False), (Interaction.DOT, True), (Interaction.CAT, False)]
)
def test_reference_style_baseline_computes_the_same_model(op, itself):
    from model.optim import SGD
    from model.reference_style import ReferenceStyleDLRM

    cfg = DLRMConfig(3, (9, 1, 6), (4, 5, 3), (6, 1), op, itself)
    ours = DLRM(cfg, torch.Generator().manual_seed(2))
    ref = ReferenceStyleDLRM(ours)
    data = RandomData(cfg.table_rows, 4, 5, 15, pooling_factor=3, seed=4)
    opt_a, opt_b = SGD(ours.parameters(), lr=0.3), torch.optim.SGD(ref.parameters(), lr=0.3)
    for batch in data:
        for model, opt in ((ours, opt_a), (ref, opt_b)):
            loss = torch.nn.BCELoss()(model(batch.dense, batch.indices, batch.offsets), batch.labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        torch.testing.assert_close(
            ref(batch.dense, batch.indices, batch.offsets), ours(batch.dense, batch.indices, batch.offsets)
        )


def test_each_table_starts_uniform_within_one_over_the_root_of_its_rows():
    from model.dlrm import Embeddings

    # the reference's U(-1/sqrt(E), 1/sqrt(E)) per table: bound 0.5 for E = 4, 0.1 for E = 100 (D = 9)
    emb = Embeddings((4, 100), 9, "torch", EmbeddingGrad.SPARSE, torch.Generator().manual_seed(0))
    small, large = emb.weight[:4].detach().abs(), emb.weight[4:].detach().abs()
    assert 0.4 < small.max() <= 0.5
    assert 0.09 < large.max() <= 0.1


def test_aligned_pad_brings_the_top_input_to_a_multiple_of_16():
    from model.dlrm import aligned_pad

    assert [aligned_pad(w) for w in (367, 368, 1, 16, 17)] == [1, 0, 15, 0, 15]
    assert aligned_pad(20, multiple=8) == 4
    cfg = DLRMConfig(4, (5, 7, 3), (3, 4), (6, 1))  # dot, no self-interaction: 4 + 6 pairs = 10 columns
    model = DLRM(cfg, torch.Generator().manual_seed(0))
    assert cfg.interaction_width == 10 and model.top_pad == 6
