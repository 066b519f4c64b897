"""The compiled dot interaction against a plain loop over vector pairs, written here."""

from __future__ import annotations

import pytest
import torch

from kernels.interaction import dot_interaction, numba_available
from model.config import Interaction
from model.dlrm import PaddedInputLinear, aligned_pad, interact

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed")


def naive(x: torch.Tensor, ly: torch.Tensor, itself: bool) -> torch.Tensor:
    """cat([x, <v_i, v_j> for i, then j < i (or <= i)]) for each sample, one dot at a time."""
    vectors = [x, *ly]
    rows = []
    for b in range(x.shape[0]):
        dots = [
            (vectors[i][b] * vectors[j][b]).sum() for i in range(len(vectors)) for j in range(i + 1 if itself else i)
        ]
        rows.append(torch.cat([x[b], torch.stack(dots)]) if dots else x[b])
    return torch.stack(rows)


@pytest.mark.parametrize("itself", [False, True])
@pytest.mark.parametrize(("B", "T", "D"), [(5, 3, 4), (1, 1, 16), (7, 26, 16), (3, 2, 3)])
def test_forward_and_gradients_match_a_loop(B: int, T: int, D: int, itself: bool) -> None:
    g = torch.Generator().manual_seed(B * 100 + T * 10 + D)
    x = torch.randn(B, D, dtype=torch.float64, generator=g, requires_grad=True)
    ly = torch.randn(T, B, D, dtype=torch.float64, generator=g, requires_grad=True)
    expected = naive(x, ly, itself)
    got = dot_interaction(x, ly, itself)
    torch.testing.assert_close(got, expected)
    grad = torch.randn(expected.shape, dtype=torch.float64, generator=g)
    want = torch.autograd.grad(expected, (x, ly), grad)
    have = torch.autograd.grad(got, (x, ly), grad)
    for w, h in zip(want, have, strict=True):
        torch.testing.assert_close(h, w)


def test_float32_matches_and_gradcheck_passes() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, dtype=torch.float64, generator=g, requires_grad=True)
    ly = torch.randn(5, 4, 8, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: dot_interaction(a, b, False), (x, ly))
    assert torch.autograd.gradcheck(lambda a, b: dot_interaction(a, b, True), (x, ly))
    x32, ly32 = x.detach().float(), ly.detach().float()
    torch.testing.assert_close(dot_interaction(x32, ly32, False), naive(x32, ly32, False), rtol=1e-5, atol=1e-5)


def test_interact_picks_the_same_pairs_on_both_paths() -> None:
    """model.dlrm.interact's torch path (bmm + tril index, the reference's way) and numba path agree."""
    g = torch.Generator().manual_seed(1)
    x, ly = torch.randn(6, 4, generator=g), torch.randn(3, 6, 4, generator=g)
    for itself in (False, True):
        rows, cols = torch.tril_indices(4, 4, offset=0 if itself else -1)
        pairs = rows * 4 + cols
        torch.testing.assert_close(
            interact(x, ly, Interaction.DOT, pairs, impl="numba"), interact(x, ly, Interaction.DOT, pairs, impl="torch")
        )


def test_bad_inputs_are_refused_before_the_kernel() -> None:
    x, ly = torch.zeros(4, 8), torch.zeros(3, 4, 8)
    with pytest.raises(ValueError, match=r"x \(4, 8\) and ly \(3, 5, 8\)"):
        dot_interaction(x, torch.zeros(3, 5, 8), False)
    with pytest.raises(ValueError, match="float32 or float64"):
        dot_interaction(x, ly.double(), False)
    with pytest.raises(ValueError, match="float32 or float64"):
        dot_interaction(x.half(), ly.half(), False)
    with pytest.raises(ValueError, match="impl 'fast'"):
        interact(x, ly, Interaction.DOT, torch.tensor([4]), impl="fast")
    with pytest.raises(ValueError, match="whole lower triangle"):
        interact(x, ly, Interaction.DOT, torch.tensor([4]), impl="numba")


@pytest.mark.parametrize("impl", ["numba", "torch"])
def test_padding_appends_zero_columns_and_ignores_their_gradient(impl: str) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    ly = torch.randn(3, 5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    rows, cols = torch.tril_indices(4, 4, offset=-1)
    pairs = rows * 4 + cols
    padded = interact(x, ly, Interaction.DOT, pairs, impl=impl, pad=6)
    expected = naive(x, ly, False)
    assert padded.shape == (5, expected.shape[1] + 6)
    torch.testing.assert_close(padded[:, : expected.shape[1]], expected)
    assert torch.equal(padded[:, expected.shape[1] :], torch.zeros(5, 6, dtype=torch.float64))
    grad = torch.randn(padded.shape, dtype=torch.float64, generator=g)  # nonzero on the padding too
    want = torch.autograd.grad(expected, (x, ly), grad[:, : expected.shape[1]])
    have = torch.autograd.grad(padded, (x, ly), grad)
    for w, h in zip(want, have, strict=True):
        torch.testing.assert_close(h, w)


def test_padded_input_linear_is_the_unpadded_layer() -> None:
    g = torch.Generator().manual_seed(4)
    layer = PaddedInputLinear(7, 3).double()
    x = torch.randn(6, 7, dtype=torch.float64, generator=g)
    x_pad = torch.cat([x, torch.zeros(6, aligned_pad(7), dtype=torch.float64)], dim=1)
    assert x_pad.shape[1] == 16
    out = layer(x_pad)
    torch.testing.assert_close(out, torch.nn.functional.linear(x, layer.weight, layer.bias))
    out.sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.shape == (3, 7)
    torch.testing.assert_close(layer.weight.grad, torch.ones(3, 6, dtype=torch.float64) @ x)
    with pytest.raises(ValueError, match="input has 5 features, the layer needs 7"):
        layer(x[:, :5])


def test_numba_kernels_leave_torchs_thread_count_alone() -> None:
    """Starting numba's OpenMP pool used to reset torch's to 2 threads: `--threads 1` ran on 2.
    Checked in a fresh interpreter, where the pool starts."""
    import subprocess
    import sys

    code = (
        "import torch; torch.set_num_threads(1)\n"
        "import kernels\n"
        "from kernels.interaction import dot_interaction\n"
        "from kernels.update import scatter_add_rows\n"
        "x, ly = torch.randn(4, 8), torch.randn(3, 4, 8)\n"
        "rows = kernels.fused_rows(torch.tensor([5, 5, 5]), torch.tensor([0, 5, 10, 15]),\n"
        "                          torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2, 3]), 1)\n"
        "dot_interaction(x, ly, False)\n"
        "scatter_add_rows(torch.zeros(15, 8), rows, torch.ones(3, 8), 1.0)\n"
        "kernels.get('numba_w16').fn(torch.randn(15, 8), rows, torch.tensor([0, 1, 2, 3]))\n"
        "print(torch.get_num_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
