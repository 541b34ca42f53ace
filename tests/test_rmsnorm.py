"""Triton RMSNorm (with the fused residual add), forward and backward, under Triton's CPU interpreter.

Errors are relative norms. Tolerances: float32 1e-5; bfloat16 1e-2 (one bf16 rounding of each result,
~2^-9 relative, which the interpreter does by truncation: up to 2^-8, observed ~4e-3).
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # must precede the first Triton kernel definition

import mamba_dna.kernels.rmsnorm_triton as rmsnorm_triton_module
import pytest
import torch
from mamba_dna.kernels import rms_norm, rms_norm_ref
from mamba_dna.kernels.rmsnorm_triton import rms_norm_triton

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
EPS = 1e-5


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    return ((got - want).norm() / want.norm().clamp_min(1e-30)).item()


def rms_norm_direct_f64(x, weight, residual, eps, prenorm, residual_in_fp32):
    """The definition in float64: s = x + residual; s / sqrt(mean(s^2) + eps) * weight."""
    s = x.double() + (residual.double() if residual is not None else 0)
    out = s / torch.sqrt((s * s).sum(-1, keepdim=True) / s.shape[-1] + eps) * weight.double()
    return (out, s) if prenorm else out


def run(fn, x, weight, residual, prenorm, residual_in_fp32, douts):
    """Outputs and the gradients of sum(out * dout) (+ sum(residual_sum * dres)) for every input."""
    # detach() keeps each input's strides (clone() would make a sliced view contiguous).
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, weight, residual)]
    res = fn(leaves[0], leaves[1], leaves[2], EPS, prenorm, residual_in_fp32)
    outs = list(res) if prenorm else [res]
    loss = sum((o.double() * g.double()).sum() for o, g in zip(outs, douts, strict=True))
    grads = torch.autograd.grad(loss, [t for t in leaves if t is not None])
    return outs + list(grads)


def check_all(x, weight, residual, prenorm, residual_in_fp32, tol, seed):
    g = torch.Generator().manual_seed(seed)
    douts = [torch.randn(x.shape, generator=g) for _ in range(2 if prenorm else 1)]
    got = run(rms_norm_triton, x, weight, residual, prenorm, residual_in_fp32, douts)
    ref = run(rms_norm_ref, x, weight, residual, prenorm, residual_in_fp32, douts)
    f64 = [t.double() if t is not None else None for t in (x, weight, residual)]
    exact = run(rms_norm_direct_f64, *f64, prenorm, residual_in_fp32, douts)
    names = ["out"] + (["residual_sum"] if prenorm else []) + ["dx", "dweight"]
    names += ["dresidual"] if residual is not None else []
    for name, a, r, e in zip(names, got, ref, exact, strict=True):
        assert a.shape == r.shape and a.dtype == r.dtype, (name, a.dtype, r.dtype)
        assert rel_err(a, r) <= tol, (name, rel_err(a, r))
        assert rel_err(r, e) <= tol, (name, "ref vs float64", rel_err(r, e))
        assert rel_err(a, e) <= tol, (name, "triton vs float64", rel_err(a, e))


@pytest.mark.parametrize("N", [7, 100, 257])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("has_residual", [False, True])
@pytest.mark.parametrize(("prenorm", "residual_in_fp32"), [(False, False), (True, False), (True, True)])
def test_rms_norm(N, dtype, has_residual, prenorm, residual_in_fp32):
    g = torch.Generator().manual_seed(N * 100 + has_residual * 10 + prenorm * 2 + residual_in_fp32)
    x = torch.randn(3, 5, N, generator=g).to(dtype)
    weight = (1 + 0.2 * torch.randn(N, generator=g)).to(dtype)
    residual = torch.randn(3, 5, N, generator=g).to(dtype) if has_residual else None
    check_all(x, weight, residual, prenorm, residual_in_fp32, TOL[dtype], seed=N)


def test_bf16_input_fp32_residual_and_weight():
    # The model's layers after the first: bf16 hidden states, the float32 residual stream of the
    # previous prenorm, float32 weight; the residual's gradient must come back in float32.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 33, 100, generator=g).to(torch.bfloat16)
    residual = torch.randn(4, 33, 100, generator=g)
    weight = 1 + 0.2 * torch.randn(100, generator=g)
    check_all(x, weight, residual, True, True, TOL[torch.bfloat16], seed=1)


def test_fp32_prenorm_saves_the_sum_not_its_inputs():
    # The model's case: autograd keeps the float32 sum (which the next block holds as its residual
    # anyway), not the bf16 x beside it; the gradients still match (test_bf16_input_fp32_residual...).
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 7, 100, generator=g).to(torch.bfloat16).requires_grad_()
    residual = torch.randn(2, 7, 100, generator=g).requires_grad_()
    weight = torch.randn(100, generator=g).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out, res_sum = rms_norm_triton(x, weight, residual, EPS, True, True)
    per_row = [t for t in saved if t.numel() >= x.numel()]
    assert (
        len(per_row) == 1 and per_row[0].untyped_storage().data_ptr() == res_sum.untyped_storage().data_ptr()
    )
    dx, dres = torch.autograd.grad((out.float() * 2).sum() + res_sum.sum(), (x, residual))
    assert dx.dtype == torch.bfloat16 and dres.dtype == torch.float32
    assert rel_err(dx.float(), dres) < 1e-2  # d/dx and d/dresidual of a function of x + residual agree


def test_noncontiguous_and_unused_output():
    # x a transposed view; only the residual sum feeds the loss, so no gradient reaches `out`.
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 64, 9, generator=g).transpose(1, 2)
    residual = torch.randn(2, 9, 64, generator=g)
    weight = torch.randn(64, generator=g)
    check_all(x, weight, residual, False, False, TOL[torch.float32], seed=2)
    xl = x.clone().requires_grad_()
    _, res_sum = rms_norm_triton(xl, weight, residual, EPS, True, False)
    (dx,) = torch.autograd.grad(res_sum.sum(), xl)
    assert torch.equal(dx, torch.ones_like(dx))


def test_backward_programs_walk_several_blocks(monkeypatch):
    # On a GPU a backward program walks many row blocks; make it so with two programs here.
    monkeypatch.setattr(rmsnorm_triton_module, "_BWD_PROGRAMS", 2)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 11, 100, generator=g)
    residual = torch.randn(7, 11, 100, generator=g)
    check_all(x, torch.randn(100, generator=g), residual, True, False, TOL[torch.float32], seed=3)


def test_public_entry_dispatches_to_triton(monkeypatch):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 6, 100, generator=g).to(torch.bfloat16)
    residual = torch.randn(2, 6, 100, generator=g).to(torch.bfloat16)
    weight = torch.randn(100, generator=g)
    want = rms_norm_triton(x, weight, residual, EPS, True, True)
    monkeypatch.setenv("MAMBA_DNA_KERNELS", "triton")
    got = rms_norm(x, weight, residual, EPS, prenorm=True, residual_in_fp32=True)
    assert all(torch.equal(a, e) for a, e in zip(got, want, strict=True))
