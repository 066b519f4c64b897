"""Our SGD (parallel sparse row updates) against torch.optim.SGD."""

from __future__ import annotations

import pytest
import torch

from kernels.update import adagrad_rows, scatter_add_rows
from model.optim import SGD, Adagrad
from profiler.cli import main


def test_scatter_add_rows_matches_a_python_loop():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(9, 5, generator=g)
    rows = torch.tensor([3, 0, 3, 8, 3, 1])  # row 3 three times
    values = torch.randn(6, 5, generator=g)
    want = weight.clone()
    for i, r in enumerate(rows.tolist()):
        want[r] += -0.5 * values[i]
    scatter_add_rows(weight, rows, values, -0.5)
    torch.testing.assert_close(weight, want)


def test_scatter_add_rows_rejects_bad_rows():
    with pytest.raises(ValueError, match=r"row ids span \[0, 9\], table has 9 rows"):
        scatter_add_rows(torch.zeros(9, 2), torch.tensor([0, 9]), torch.zeros(2, 2), 1.0)
    with pytest.raises(ValueError, match="do not match"):
        scatter_add_rows(torch.zeros(9, 2), torch.tensor([0, 1]), torch.zeros(2, 3), 1.0)


@pytest.mark.parametrize("threads", [1, 2])
def test_sgd_matches_torch_sgd_on_sparse_and_dense_grads(threads):
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(1)
    table = torch.randn(1000, 8, generator=g)
    dense = torch.randn(4, 3, generator=g)
    indices = torch.randint(0, 1000, (500,), generator=g)  # many repeats
    offsets = torch.arange(0, 501, 5)
    params = {}
    for name, opt_cls in (("ours", SGD), ("torch", torch.optim.SGD)):
        t = torch.nn.Parameter(table.clone())
        d = torch.nn.Parameter(dense.clone())
        opt = opt_cls([t, d], lr=0.3)
        for _ in range(3):
            out = torch.nn.functional.embedding_bag(indices, t, offsets, sparse=True, include_last_offset=True)
            loss = (out**2).sum() + (d**3).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        params[name] = (t.detach(), d.detach())
    torch.testing.assert_close(params["ours"][0], params["torch"][0])
    torch.testing.assert_close(params["ours"][1], params["torch"][1])


@pytest.mark.parametrize("kernel", ["torch", "torch_naive"])
def test_fused_embedding_update_equals_sparse_gradient_then_torch_sgd(kernel):
    from model.config import EmbeddingGrad
    from model.data import RandomData
    from model.dlrm import Embeddings

    rows = (40, 1, 25)
    batch = RandomData(rows, 3, 16, 16, pooling_factor=6, seed=3).batch(0)
    grad_out = torch.randn(3, 16, 5, generator=torch.Generator().manual_seed(2))
    weights = {}
    for grad in (EmbeddingGrad.SPARSE, EmbeddingGrad.FUSED):
        emb = Embeddings(rows, 5, kernel, grad, torch.Generator().manual_seed(0))
        emb.fused_lr = 0.7
        opt = torch.optim.SGD(emb.parameters(), lr=0.7)
        emb(batch.indices, batch.offsets, 16).backward(grad_out)
        if grad == EmbeddingGrad.FUSED:
            assert emb.weight.grad is None  # no gradient is built
        opt.step()
        weights[grad] = emb.weight.detach()
    before = Embeddings(rows, 5, kernel, EmbeddingGrad.SPARSE, torch.Generator().manual_seed(0)).weight.detach()
    assert not torch.equal(weights[EmbeddingGrad.SPARSE], before)
    torch.testing.assert_close(weights[EmbeddingGrad.FUSED], weights[EmbeddingGrad.SPARSE])


def test_weight_decay_dense_like_torch_and_sparse_only_on_touched_rows():
    g = torch.Generator().manual_seed(5)
    dense = torch.nn.Parameter(torch.randn(4, 3, generator=g))
    twin = torch.nn.Parameter(dense.detach().clone())
    grad = torch.randn(4, 3, generator=g)
    dense.grad, twin.grad = grad.clone(), grad.clone()
    SGD([dense], lr=0.1, weight_decay=0.5).step()
    torch.optim.SGD([twin], lr=0.1, weight_decay=0.5).step()  # p -= lr * (g + wd * p)
    torch.testing.assert_close(dense, twin)

    table = torch.nn.Parameter(torch.randn(6, 2, generator=g))
    before = table.detach().clone()
    rows = torch.tensor([4, 1, 4])  # row 4 twice: decays once, both gradients add
    values = torch.randn(3, 2, generator=g)
    table.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values, (6, 2), check_invariants=True)
    SGD([table], lr=0.1, weight_decay=0.5).step()
    want = before.clone()
    for r in (1, 4):
        want[r] *= 1 - 0.1 * 0.5
    for i, r in enumerate(rows.tolist()):
        want[r] -= 0.1 * values[i]
    torch.testing.assert_close(table.detach(), want)  # rows 0, 2, 3, 5 untouched


def test_weight_decay_refused_where_it_has_no_meaning():
    from model.config import DLRMConfig, EmbeddingGrad
    from model.optim import make_optimizer

    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(NotImplementedError, match="sgd only"):
        make_optimizer("adagrad", p, 0.1, DLRMConfig(), weight_decay=0.1)
    with pytest.raises(NotImplementedError, match="fused update has no decay"):
        make_optimizer("sgd", p, 0.1, DLRMConfig(embedding_grad=EmbeddingGrad.FUSED), weight_decay=0.1)
    with pytest.raises(ValueError, match="weight decay must be >= 0"):
        SGD(p, lr=0.1, weight_decay=-1.0)


def _rowwise_by_hand(table, steps, lr, eps=1e-10):
    """Row-wise Adagrad with plain loops: per step, duplicate rows summed, then per row
    acc += mean(g^2) and row -= lr * g / (sqrt(acc) + eps)."""
    w = [list(map(float, row)) for row in table.tolist()]
    acc = [0.0] * len(w)
    for rows, grads in steps:
        summed: dict[int, list[float]] = {}
        for r, g in zip(rows.tolist(), grads.tolist(), strict=True):
            summed[r] = [a + b for a, b in zip(summed.get(r, [0.0] * len(g)), g, strict=True)]
        for r, g in summed.items():
            acc[r] += sum(x * x for x in g) / len(g)
            w[r] = [x - lr * gx / (acc[r] ** 0.5 + eps) for x, gx in zip(w[r], g, strict=True)]
    return torch.tensor(w, dtype=torch.float64)


def test_rowwise_adagrad_matches_a_python_loop_and_torch_adagrad_on_dense_params():
    gen = torch.Generator().manual_seed(0)
    table0, bias0 = (
        torch.randn(6, 3, generator=gen, dtype=torch.float64),
        torch.randn(4, generator=gen, dtype=torch.float64),
    )
    steps = [(torch.tensor([1, 4, 1]), torch.randn(3, 3, generator=gen, dtype=torch.float64)),  # row 1 twice
             (torch.tensor([4, 0]), torch.randn(2, 3, generator=gen, dtype=torch.float64))]  # fmt: skip
    dense_grads = [torch.randn(4, generator=gen, dtype=torch.float64) for _ in steps]
    expected = _rowwise_by_hand(table0, steps, lr=0.1)
    bias_ref = bias0.clone().requires_grad_()
    ref = torch.optim.Adagrad([bias_ref], lr=0.1)
    for as_dense in (False, True):  # a sparse gradient, or the same as a dense (E, D) one in the tables' group
        table, bias = table0.clone().requires_grad_(), bias0.clone().requires_grad_()
        opt = Adagrad([{"params": [table], "tables": True}, {"params": [bias]}], lr=0.1, row_wise_tables=True)
        for (rows, grads), dg in zip(steps, dense_grads, strict=True):
            sparse = torch.sparse_coo_tensor(rows.unsqueeze(0), grads, table.shape, check_invariants=True)
            table.grad = sparse.to_dense() if as_dense else sparse
            bias.grad = dg.clone()
            opt.step()
        torch.testing.assert_close(table.detach(), expected)
        assert opt.state[table]["sum"].shape == (6,)  # one accumulator per row
    for dg in dense_grads:
        bias_ref.grad = dg.clone()
        ref.step()
    torch.testing.assert_close(bias.detach(), bias_ref.detach())


def test_rwsadagrad_trains_from_the_cli_and_refuses_fused(capsys):
    base = ["train", "--num-batches=3", "--mini-batch-size=8", "--optimizer=rwsadagrad", "--print-freq=100"]
    assert main(base) == 0
    assert main([*base, "--embedding-grad=fused"]) == 2
    assert "--optimizer rwsadagrad with --embedding-grad fused" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")
@pytest.mark.parametrize("row_wise", [False, True])
def test_adagrad_on_cuda_matches_the_cpu(row_wise):
    gen = torch.Generator().manual_seed(1)
    table0 = torch.randn(50, 8, generator=gen)
    steps = [(torch.randint(0, 50, (40,), generator=gen), torch.randn(40, 8, generator=gen)) for _ in range(3)]
    out = {}
    for device in ("cpu", "cuda"):
        table = table0.to(device).requires_grad_()
        opt = Adagrad([{"params": [table], "tables": True}], lr=0.05, row_wise_tables=row_wise)
        for rows, grads in steps:
            grad = torch.sparse_coo_tensor(rows.unsqueeze(0), grads, table.shape, check_invariants=True)
            table.grad = grad.to(device)
            opt.step()
        out[device] = table.detach().cpu()
    torch.testing.assert_close(out["cuda"], out["cpu"])


@pytest.mark.parametrize("threads", [1, 2])
def test_rowwise_adagrad_compiled_path_on_many_duplicates(threads):
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(2)
    table0 = torch.randn(300, 16, generator=gen)
    steps = [(torch.randint(0, 300, (2000,), generator=gen), torch.randn(2000, 16, generator=gen)) for _ in range(3)]
    expected = _rowwise_by_hand(table0.double(), [(r, g.double()) for r, g in steps], lr=0.05)
    table = table0.clone().requires_grad_()
    opt = Adagrad([{"params": [table], "tables": True}], lr=0.05, row_wise_tables=True)
    for rows, grads in steps:  # uncoalesced, as the embedding backward gives it
        table.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), grads, table.shape, check_invariants=True)
        opt.step()
    torch.testing.assert_close(table.detach().double(), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"row ids span \[0, 300\], table has 300 rows"):
        adagrad_rows(table.detach(), torch.zeros(300), torch.tensor([0, 300]), torch.zeros(2, 16), 0.1, 1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adagrad_matches_torch_adagrad_on_uncoalesced_sparse_and_dense_grads(dtype):
    gen = torch.Generator().manual_seed(3)
    table0, w0 = torch.randn(200, 8, generator=gen, dtype=dtype), torch.randn(5, 3, generator=gen, dtype=dtype)
    steps = [(torch.randint(0, 200, (600,), generator=gen), torch.randn(600, 8, generator=gen, dtype=dtype),
              torch.randn(5, 3, generator=gen, dtype=dtype)) for _ in range(3)]  # fmt: skip
    out = {}
    for name, make in (
        ("ours", lambda ps: Adagrad(ps, lr=0.07)),
        ("torch", lambda ps: torch.optim.Adagrad(ps, lr=0.07)),
    ):
        table, w = table0.clone().requires_grad_(), w0.clone().requires_grad_()
        opt = make([{"params": [table], "tables": True}, {"params": [w]}])
        with torch.sparse.check_sparse_tensor_invariants(enable=False):  # said, as torch's Adagrad warns if implicit
            for rows, grads, dw in steps:
                # rows repeat
                table.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), grads, table.shape, check_invariants=True)
                w.grad = dw.clone()
                opt.step()
        out[name] = (table.detach(), w.detach())
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {}
    torch.testing.assert_close(out["ours"][0], out["torch"][0], **tol)
    torch.testing.assert_close(out["ours"][1], out["torch"][1], **tol)


def test_adagrad_tables_of_different_sizes_stepped_in_turn_match_torch():
    # the compiled pass keeps its per-row scratch between steps; alternating sizes must not mix it up
    gen = torch.Generator().manual_seed(4)
    tables0 = [torch.randn(rows, 4, generator=gen) for rows in (200, 120, 200)]
    steps = [[(torch.randint(0, len(t), (500,), generator=gen), torch.randn(500, 4, generator=gen)) for t in tables0]
             for _ in range(3)]  # fmt: skip
    out = {}
    for name, make in (("ours", Adagrad), ("torch", torch.optim.Adagrad)):
        tables = [t.clone().requires_grad_() for t in tables0]
        opts = [make([t], lr=0.05) for t in tables]
        for step in steps:
            for t, opt, (rows, grads) in zip(tables, opts, step, strict=True):
                t.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), grads, t.shape, check_invariants=True)
                opt.step()
        out[name] = [t.detach() for t in tables]
    for ours, ref in zip(out["ours"], out["torch"], strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("tables", "rest"), [("sgd", "adagrad"), ("adagrad", "sgd"), ("rwsadagrad", "sgd")])
def test_embedding_optimizer_steps_the_tables_and_the_rest_each_with_its_own_rule(tables, rest):
    from model.config import DLRMConfig
    from model.optim import make_optimizer

    reference = {
        "sgd": lambda ps, lr: torch.optim.SGD(ps, lr=lr),
        "adagrad": lambda ps, lr: torch.optim.Adagrad(ps, lr=lr),
        "rwsadagrad": lambda ps, lr: Adagrad([{"params": ps, "tables": True}], lr=lr, row_wise_tables=True),
    }
    gen = torch.Generator().manual_seed(4)
    table0, w0 = torch.randn(60, 4, generator=gen), torch.randn(6, 3, generator=gen)
    steps = [(torch.randint(0, 60, (90,), generator=gen), torch.randn(90, 4, generator=gen),
              torch.randn(6, 3, generator=gen)) for _ in range(3)]  # fmt: skip
    cfg = DLRMConfig(4, (60,), (3, 4), (4, 1))
    out = {}
    for who in ("split", "reference"):
        table, w = table0.clone().requires_grad_(), w0.clone().requires_grad_()
        if who == "split":
            opt = make_optimizer(rest, [{"params": [table], "lr": 0.3, "tables": True}, {"params": [w]}], 0.05, cfg,
                                 embedding=tables)  # fmt: skip
            opts = [opt]
        else:
            opts = [reference[tables]([table], 0.3), reference[rest]([w], 0.05)]
        for k, (rows, grads, dw) in enumerate(steps):
            if k == 2:  # a schedule halves every rate: it must reach both parts
                for o in opts:
                    for g in o.param_groups:
                        g["lr"] /= 2
            table.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), grads, table.shape, check_invariants=True)
            w.grad = dw.clone()
            for o in opts:
                o.step()
        out[who] = (table.detach(), w.detach())
    torch.testing.assert_close(out["split"], out["reference"])


def test_embedding_optimizer_from_the_cli_and_its_refusals(capsys):
    base = ["train", "--num-batches=3", "--mini-batch-size=4", "--optimizer=adagrad"]
    assert main([*base, "--embedding-optimizer=sgd", "--embedding-grad=fused"]) == 0  # fused SGD on the tables
    assert main([*base, "--embedding-optimizer=adagrad", "--embedding-grad=fused"]) == 2
    assert "--embedding-optimizer adagrad with --embedding-grad fused" in capsys.readouterr().err
    assert main([*base, "--embedding-optimizer=sgd", "--weight-decay=0.1"]) == 2
    assert "--weight-decay is implemented for --optimizer sgd only" in capsys.readouterr().err
    assert main([*base, "--embedding-optimizer=none", "--embedding-learning-rate=0.5"]) == 2  # was ignored
    assert "--embedding-learning-rate 0.5 with --embedding-optimizer none" in capsys.readouterr().err
    assert main([*base, "--embedding-optimizer=none"]) == 0


def test_rowwise_adagrad_torch_path_for_sparse_grads_matches_the_python_loop(monkeypatch):
    # the path a CUDA table (or one the compiled pass declines) takes: coalesce, then row-wise update
    import model.optim

    monkeypatch.setattr(model.optim, "adagrad_rows", lambda *a, **k: False)
    gen = torch.Generator().manual_seed(1)
    table0 = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    steps = [(torch.tensor([1, 4, 1]), torch.randn(3, 3, generator=gen, dtype=torch.float64)),  # row 1 twice
             (torch.tensor([4, 0]), torch.randn(2, 3, generator=gen, dtype=torch.float64))]  # fmt: skip
    table = table0.clone().requires_grad_()
    opt = Adagrad([{"params": [table], "tables": True}], lr=0.1, row_wise_tables=True)
    for rows, grads in steps:
        table.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), grads, table.shape, check_invariants=True)
        opt.step()
    torch.testing.assert_close(table.detach(), _rowwise_by_hand(table0, steps, lr=0.1))


def _frozen_tables_against_torch(kernel, ours, reference):
    """Train a small DLRM with `ours(params)` (tables frozen) and a twin whose tables are detached with
    `reference(params)` (a torch optimizer) on the same 4 batches; assert the tables ended where they started
    and every other weight matches the twin's. Returns the model."""
    from model.config import DLRMConfig, Interaction
    from model.data import RandomData
    from model.dlrm import DLRM
    from model.optim import param_groups

    cfg = DLRMConfig(4, (30, 20), (5, 8, 4), (12, 6, 1), Interaction.CAT, kernel=kernel)
    model = DLRM(cfg, torch.Generator().manual_seed(0))
    ref = DLRM(cfg, torch.Generator().manual_seed(0))
    ref.embeddings.weight.requires_grad_(False)
    tables = model.embeddings.weight.detach().clone()
    opt = ours(param_groups(model, 0.5), cfg)
    ref_opt = reference([p for p in ref.parameters() if p.requires_grad])
    data = RandomData(cfg.table_rows, cfg.num_dense, 16, 64, 4, False, 1)
    for i in range(4):
        b = data.batch(i)
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad(set_to_none=True)
            torch.nn.functional.binary_cross_entropy(m(b.dense, b.indices, b.offsets), b.labels).backward()
            o.step()
    assert model.embeddings.weight.grad is None
    torch.testing.assert_close(model.embeddings.weight.detach(), tables, rtol=0, atol=0)
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), msg=name)
    return model


@pytest.mark.parametrize("kernel", ["torch", "numba_w8"])
def test_embedding_optimizer_none_keeps_the_tables_and_trains_the_rest_as_torch_adagrad(kernel):
    from model.config import DLRMConfig
    from model.optim import make_optimizer, param_groups

    model = _frozen_tables_against_torch(
        kernel,
        lambda groups, cfg: make_optimizer("adagrad", groups, 0.01, cfg, embedding="none"),
        lambda params: torch.optim.Adagrad(params, lr=0.01),
    )
    fused = DLRMConfig(4, (30,), (5, 4), (8, 1), embedding_grad="fused")
    with pytest.raises(NotImplementedError, match="--embedding-optimizer none with --embedding-grad fused"):
        make_optimizer("sgd", param_groups(model, 0.5), 0.01, fused, embedding="none")


def test_embedding_optimizer_none_with_weight_decay_decays_the_mlps_as_torch_sgd_and_not_the_tables():
    from model.optim import make_optimizer, param_groups

    model = _frozen_tables_against_torch(
        "torch",
        lambda groups, cfg: make_optimizer("sgd", groups, 0.05, cfg, weight_decay=0.1, embedding="none"),
        lambda params: torch.optim.SGD(params, lr=0.05, weight_decay=0.1),
    )
    with pytest.raises(NotImplementedError, match="--weight-decay is implemented for --optimizer sgd only"):
        make_optimizer("adagrad", param_groups(model, 0.5), 0.05, model.config, weight_decay=0.1, embedding="none")
