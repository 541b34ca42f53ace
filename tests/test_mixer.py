"""The S6 mixer's data layout: the scan gets length-contiguous tensors, and autograd keeps no copies.

On an H100 the transposed views of one (b, l, 2d) in_proj product cost a 3.5M model 1.16 s of strided copies
per 2^20-base training step (benchmarks/RESULTS.md); these tests pin the layout that removed them, and
check that it still computes the textbook block.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from mamba_dna.kernels.selective_scan_ref import selective_scan_ref

from mamba_dna import mixer as mixer_module
from mamba_dna.config import MambaConfig
from mamba_dna.mixer import Mamba, weight_times, weight_times_rows


def _layer(bias: bool, seed: int = 0) -> Mamba:
    torch.manual_seed(seed)
    layer = Mamba(MambaConfig(d_model=24, n_layer=1, d_state=8, bias=bias))
    if bias:
        with torch.no_grad():
            layer.in_proj.bias.normal_()
            layer.out_proj.bias.normal_()
    return layer


def _textbook(layer: Mamba, hidden: torch.Tensor) -> torch.Tensor:
    """The block as the paper writes it, on (b, l, channels) tensors with plain linear layers."""
    c = layer.config
    x, z = layer.in_proj(hidden).chunk(2, dim=-1)
    x = F.silu(layer.conv1d(x.transpose(1, 2))[..., : hidden.shape[1]])  # causal: drop the right padding
    dt, B, C = torch.split(layer.x_proj(x.transpose(1, 2)), [c.dt_rank_value, c.d_state, c.d_state], -1)
    delta = layer.dt_proj(dt)  # bias included here, so the scan gets none
    y = selective_scan_ref(
        x, delta.transpose(1, 2), -torch.exp(layer.A_log), B.transpose(1, 2), C.transpose(1, 2),
        layer.D, z.transpose(1, 2), None, True,
    )  # fmt: skip
    return layer.out_proj(y.transpose(1, 2))


@pytest.mark.parametrize("bias", [False, True])
def test_mixer_computes_the_textbook_block(bias):
    layer = _layer(bias)
    hidden = torch.randn(3, 37, 24, requires_grad=True)
    ours = layer(hidden)
    want = _textbook(layer, hidden)
    assert torch.allclose(ours, want, atol=1e-5, rtol=1e-4)
    params = [hidden, *layer.parameters()]
    g_ours = torch.autograd.grad(ours.square().sum(), params)
    g_want = torch.autograd.grad(_textbook(layer, hidden).square().sum(), params)
    for a, b in zip(g_ours, g_want, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("batch", [1, 3])
def test_the_scan_gets_length_contiguous_inputs(monkeypatch, batch):
    seen = {}

    def spy(u, delta, A, B, C, D, z, *args, **kwargs):
        seen.update(u=u, delta=delta, z=z, B=B, C=C)
        return selective_scan_ref(u, delta, A, B, C, D, z, *args, **kwargs)

    monkeypatch.setattr(mixer_module, "selective_scan", spy)
    _layer(bias=True)(torch.randn(batch, 50, 24))
    for name in ("u", "delta", "z"):
        assert seen[name].is_contiguous(), name  # the scan would copy them otherwise (1 KiB/base each)
    for name in ("B", "C"):
        assert seen[name].stride(-1) == 1, name  # row slices of one product: only their batch stride differs


@pytest.mark.parametrize("rows", [False, True])
def test_weight_times_keeps_no_copy_for_backward(rows):
    w = torch.randn(6, 5, requires_grad=True)
    x = torch.randn(3, 5, 11, requires_grad=True)  # batch > 1: where torch.matmul would fold with a copy
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = weight_times_rows(w, x) if rows else weight_times(w, x)
    assert out.is_contiguous() and out.shape == ((3, 11, 6) if rows else (3, 6, 11))
    want = torch.einsum("mk,bkl->bml", w, x)
    assert torch.allclose(out, want.mT if rows else want, atol=1e-6)
    # What autograd keeps: x itself (same storage) and a stride-0 view of the weight, nothing of size b x l.
    big = [t for t in saved if t.untyped_storage().nbytes() >= x.untyped_storage().nbytes()]
    assert big and all(t.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() for t in big)
    weights = [t for t in saved if t.shape[-2:] in ((6, 5), (5, 6))]
    assert weights and all(t.untyped_storage().nbytes() <= w.untyped_storage().nbytes() for t in weights)


@pytest.mark.parametrize("batch", [1, 3])
def test_weight_times_rows_gives_x_a_length_contiguous_gradient(batch):
    # The scan produced x as (b, k, l) and copies any gradient not in that layout: one strided pass per
    # layer. The gradients must also be the linear layer's.
    torch.manual_seed(0)
    w = torch.randn(6, 5, requires_grad=True)
    bias = torch.randn(6, requires_grad=True)
    x = torch.randn(batch, 5, 11, requires_grad=True)
    g = torch.randn(batch, 11, 6)
    weight_times_rows(w, x, bias).backward(g)
    assert x.grad.is_contiguous() and x.grad.shape == x.shape
    got = (x.grad, w.grad, bias.grad)
    for t in (x, w, bias):
        t.grad = None
    F.linear(x.mT, w, bias).backward(g)
    for name, a, b in zip(("x", "weight", "bias"), got, (x.grad, w.grad, bias.grad), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name


def test_weight_times_rows_skips_gradients_not_asked_for():
    w = torch.randn(6, 5)
    x = torch.randn(2, 5, 7, requires_grad=True)
    weight_times_rows(w, x).sum().backward()
    assert w.grad is None and torch.allclose(x.grad, w.sum(0)[None, :, None].expand(2, 5, 7))


@pytest.mark.parametrize("rows", [False, True])
def test_weight_times_under_autocast_casts_the_weight_once(rows):
    torch.manual_seed(0)
    w = torch.randn(6, 5, requires_grad=True)
    x = torch.randn(4, 5, 11).bfloat16().requires_grad_()
    saved = []
    hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t)
    with torch.autocast("cpu", dtype=torch.bfloat16), hooks:
        out = weight_times_rows(w, x) if rows else weight_times(w, x)
    assert out.dtype == torch.bfloat16
    # The weight is kept as one (6, 5) bf16 cast, broadcast over the batch: not a (4, 6, 5) materialised copy.
    weights = [t for t in saved if t.shape[-2:] == (6, 5)]
    assert weights and all(t.untyped_storage().nbytes() == 6 * 5 * 2 for t in weights)
    out.float().sum().backward()
    # d(sum)/dw[m, k] = sum over batch and length of x[:, k, :]; bf16 inputs and products: 2% tolerance.
    assert torch.allclose(w.grad, x.float().sum((0, 2))[None, :].expand(6, 5), rtol=2e-2, atol=2e-2)
