"""Triton RMSNorm with the fused residual add of mamba_ssm's ``rms_norm_fn``, forward and backward.

Rows are the flattened leading dimensions, normalised over the last one (held whole in registers).
The forward runs one program per block of rows and saves only 1/rms per row besides its inputs. The
backward needs ``s = x + residual`` in float32: when the forward returns that sum in float32 (prenorm with
``residual_in_fp32``, the model's default), it is saved instead of x and the residual, so autograd keeps
one tensor per layer that the next block holds anyway as its residual (in the model this frees x, the
mixer's output: 512 bytes per base and layer at d_model 256 in bf16). Otherwise the backward recomputes
the sum from the inputs rather than reading back a sum rounded to bf16. Backward programs stride over the
row blocks and keep their d(weight) sums in registers, so the partial-sum buffer has one row per program,
not one per row block. Offsets are int64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# One row must fit in registers; mamba_ssm's fused norm has the same bound.
_MAX_HIDDEN = 65536
# Backward programs: enough to fill an H100's 132 SMs several times over (256 to 2048 measured alike).
_BWD_PROGRAMS = 512


@triton.jit
def _rms_fwd_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    res_out_ptr,
    rstd_ptr,
    M,
    N,
    eps,
    stride_x,
    stride_res,
    stride_out,
    stride_res_out,
    HAS_RESIDUAL: tl.constexpr,
    STORE_RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < M
    mask = row_ok[:, None] & (cols < N)[None, :]
    s = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        s += tl.load(res_ptr + rows[:, None] * stride_res + cols[None, :], mask=mask, other=0.0).to(
            tl.float32
        )
    if STORE_RESIDUAL:
        res_out = res_out_ptr + rows[:, None] * stride_res_out + cols[None, :]
        tl.store(res_out, s.to(res_out_ptr.dtype.element_ty), mask=mask)
    rstd = tl.rsqrt(tl.sum(s * s, axis=1) / N + eps)
    tl.store(rstd_ptr + rows, rstd, mask=row_ok)
    w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    out = s * rstd[:, None] * w[None, :]
    tl.store(
        out_ptr + rows[:, None] * stride_out + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask
    )


@triton.jit
def _rms_bwd_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    rstd_ptr,
    dy_ptr,
    dres_out_ptr,
    dx_ptr,
    dres_ptr,
    dw_part_ptr,
    M,
    N,
    n_row_blocks,
    stride_x,
    stride_res,
    stride_dy,
    stride_dres_out,
    stride_dx,
    stride_dres,
    HAS_RESIDUAL: tl.constexpr,
    HAS_DRES_OUT: tl.constexpr,
    STORE_DRES: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    for blk in range(pid, n_row_blocks, tl.num_programs(0)):
        # Row indices fit in int32 (M does); the int64 arange makes the products with strides int64.
        rows = tl.arange(0, BLOCK_M).to(tl.int64) + blk * BLOCK_M
        row_ok = rows < M
        mask = row_ok[:, None] & col_ok[None, :]
        s = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            res = tl.load(res_ptr + rows[:, None] * stride_res + cols[None, :], mask=mask, other=0.0)
            s += res.to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
        xhat = s * rstd[:, None]
        dy = tl.load(dy_ptr + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dw += tl.sum(dy * xhat, axis=0)
        wdy = dy * w[None, :]
        # d/ds of s * rstd(s): rstd * (g - xhat * mean(g * xhat)) for the incoming gradient g.
        ds = (wdy - xhat * (tl.sum(wdy * xhat, axis=1) / N)[:, None]) * rstd[:, None]
        if HAS_DRES_OUT:
            dres_out = dres_out_ptr + rows[:, None] * stride_dres_out + cols[None, :]
            ds += tl.load(dres_out, mask=mask, other=0.0).to(tl.float32)
        tl.store(
            dx_ptr + rows[:, None] * stride_dx + cols[None, :], ds.to(dx_ptr.dtype.element_ty), mask=mask
        )
        if STORE_DRES:
            dres = dres_ptr + rows[:, None] * stride_dres + cols[None, :]
            tl.store(dres, ds.to(dres_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_part_ptr + pid.to(tl.int64) * N + cols, dw, mask=col_ok)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t as (rows, hidden) with a unit stride along hidden (a view when the layout allows)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _tile(N: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps): a whole row wide, several short rows per program."""
    BLOCK_N = triton.next_power_of_2(N)
    BLOCK_M = max(1, min(16, 4096 // BLOCK_N))
    num_warps = min(8, max(1, BLOCK_M * BLOCK_N // 512))
    return BLOCK_M, BLOCK_N, num_warps


class _RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        weight: torch.Tensor,
        residual: torch.Tensor | None,
        eps: float,
        prenorm: bool,
        residual_in_fp32: bool,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        shape, N = x.shape, x.shape[-1]
        if N > _MAX_HIDDEN:
            raise ValueError(f"rms_norm_triton supports a hidden size up to {_MAX_HIDDEN}, got {N}")
        x2 = _rows(x)
        res2 = _rows(residual) if residual is not None else None
        w = weight.contiguous()
        M = x2.shape[0]
        out = torch.empty(M, N, dtype=x.dtype, device=x.device)
        res_out = None
        if prenorm:
            res_out = torch.empty(M, N, dtype=torch.float32 if residual_in_fp32 else x.dtype, device=x.device)
        rstd = torch.empty(M, dtype=torch.float32, device=x.device)
        BLOCK_M, BLOCK_N, num_warps = _tile(N)
        # Absent tensors get a stand-in pointer that their flag keeps untouched.
        res_ = res2 if res2 is not None else x2
        res_out_ = res_out if res_out is not None else out
        _rms_fwd_kernel[(triton.cdiv(M, BLOCK_M),)](
            x2, res_, w, out, res_out_, rstd, M, N, eps,
            x2.stride(0), res_.stride(0), out.stride(0), res_out_.stride(0),
            HAS_RESIDUAL=res2 is not None, STORE_RESIDUAL=prenorm,
            BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps,
        )  # fmt: skip
        if res_out is not None and res_out.dtype == torch.float32:
            ctx.save_for_backward(res_out, None, w, rstd)  # the exact sum: x and residual can be freed
        else:
            ctx.save_for_backward(x2, res2, w, rstd)
        ctx.shape = shape
        ctx.x_dtype = x.dtype
        ctx.weight_dtype = weight.dtype
        ctx.residual_dtype = residual.dtype if residual is not None else None
        ctx.set_materialize_grads(False)
        if not prenorm:
            return out.view(shape)
        return out.view(shape), res_out.view(shape)

    @staticmethod
    def backward(ctx, dout: torch.Tensor | None, dres_out: torch.Tensor | None = None):
        # x2 is x, or the float32 sum x + residual (then res2 is None and the kernel reads the sum as x).
        x2, res2, w, rstd = ctx.saved_tensors
        M, N = x2.shape
        dy = _rows(dout) if dout is not None else x2.new_zeros(M, N)
        dres_out2 = _rows(dres_out) if dres_out is not None else None
        dx = torch.empty(M, N, dtype=ctx.x_dtype, device=x2.device)
        # The residual's gradient equals x's; it needs its own buffer only in another dtype.
        has_res = ctx.residual_dtype is not None
        store_dres = has_res and ctx.residual_dtype != ctx.x_dtype
        dres = torch.empty(M, N, dtype=ctx.residual_dtype, device=x2.device) if store_dres else dx
        BLOCK_M, BLOCK_N, num_warps = _tile(N)
        n_row_blocks = triton.cdiv(M, BLOCK_M)
        n_progs = min(n_row_blocks, _BWD_PROGRAMS)
        dw_part = torch.empty(n_progs, N, dtype=torch.float32, device=x2.device)
        res_ = res2 if res2 is not None else x2
        dres_out_ = dres_out2 if dres_out2 is not None else dy
        _rms_bwd_kernel[(n_progs,)](
            x2, res_, w, rstd, dy, dres_out_, dx, dres, dw_part, M, N, n_row_blocks,
            x2.stride(0), res_.stride(0), dy.stride(0), dres_out_.stride(0), dx.stride(0), dres.stride(0),
            HAS_RESIDUAL=res2 is not None, HAS_DRES_OUT=dres_out2 is not None, STORE_DRES=store_dres,
            BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps,
        )  # fmt: skip
        # A fixed-order sum of the per-program partials: deterministic, no atomics.
        dweight = dw_part.sum(0).to(ctx.weight_dtype)
        dresidual = dres.view(ctx.shape) if has_res else None
        return dx.view(ctx.shape), dweight, dresidual, None, None, None


def rms_norm_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    residual: torch.Tensor | None = None,
    eps: float = 1e-5,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`rms_norm_ref`; differentiable in x, weight, residual and the returned sum."""
    return _RMSNormFn.apply(x, weight, residual, eps, prenorm, residual_in_fp32)
