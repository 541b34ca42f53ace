"""Pure-PyTorch selective scan: the oracle for the Triton kernel and the CPU path of the model.

Semantics are those of mamba_ssm's ``selective_scan_fn``::

    dt_t = softplus(delta_t + delta_bias)            (softplus and bias optional)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t  = C_t . h_t + D * u_t,   then  y_t *= silu(z_t)   (D and z optional)

The length is processed in chunks. Inside a chunk the linear recurrence is solved by a log-depth
(Hillis-Steele) scan over (decay, input) pairs, which only ever multiplies decays in (0, 1] and so is
numerically safe, unlike the cumulative-sum-of-logs trick. Only one chunk's (batch, d, chunk, n) state
exists at a time; under autograd each chunk is recomputed in the backward pass (activation
checkpointing), so a 2^20-long sequence fits in CPU memory in both directions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# 64: the (batch, d, chunk, n) temporaries of a chunk then stay in the CPU's caches. Tiny preset, batch 8 x
# 1024 on 2 cores: 256 -> 64 took training from 2.8k to 6.0k bases/s and inference from 13k to 36k.
DEFAULT_CHUNK = 64


def _expand_groups(M: torch.Tensor, d: int) -> torch.Tensor:
    """(b, n, L) -> (b, 1, n, L); (b, g, n, L) -> (b, d, n, L) with channel i reading group i // (d // g)."""
    if M.dim() == 3:
        return M.unsqueeze(1)
    g = M.shape[1]
    if d % g:
        raise ValueError(f"d={d} is not a multiple of the number of B/C groups {g}")
    return M.repeat_interleave(d // g, dim=1)


def _scan_chunk(
    dA: torch.Tensor, dBu: torch.Tensor, C: torch.Tensor, h0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk: dA, dBu (b, d, T, n); C (b, 1|d, n, T); h0 (b, d, n) -> y (b, d, T), h_T (b, d, n)."""
    a, x = dA, dBu
    T = a.shape[2]
    k = 1
    while k < T:  # inclusive scan of h_t = a_t h_{t-1} + x_t over the chunk
        x = torch.cat([x[:, :, :k], a[:, :, k:] * x[:, :, :-k] + x[:, :, k:]], dim=2)
        a = torch.cat([a[:, :, :k], a[:, :, k:] * a[:, :, :-k]], dim=2)
        k *= 2
    h = x + a * h0.unsqueeze(2)  # (b, d, T, n)
    y = torch.einsum("bdtn,bdnt->bdt", h, C.expand(-1, h.shape[1], -1, -1))
    return y, h[:, :, -1]


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan in PyTorch; shapes as in :func:`mamba_dna.kernels.selective_scan`.

    Computes in float32 (float64 if the inputs are float64) and returns ``y`` in ``u``'s dtype; the
    last state is float32 (or float64).
    """
    dtype_in = u.dtype
    ctype = torch.float64 if u.dtype == torch.float64 else torch.float32
    b, d, L = u.shape
    n = A.shape[-1]
    u_, delta_ = u.to(ctype), delta.to(ctype)
    if delta_bias is not None:
        delta_ = delta_ + delta_bias.to(ctype)[:, None]
    if delta_softplus:
        delta_ = F.softplus(delta_)
    A_ = A.to(ctype)
    Bx, Cx = _expand_groups(B.to(ctype), d), _expand_groups(C.to(ctype), d)
    h = (
        initial_state.to(ctype)
        if initial_state is not None
        else torch.zeros(b, d, n, dtype=ctype, device=u.device)
    )
    use_ckpt = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, delta_bias, initial_state)
    )

    def chunk_fn(u_c, dt_c, B_c, C_c, h_in):
        dA = torch.exp(dt_c.unsqueeze(-1) * A_[:, None, :])  # (b, d, T, n)
        dBu = (dt_c * u_c).unsqueeze(-1) * B_c.transpose(2, 3)  # (b, 1|d, T, n) -> broadcast to d
        return _scan_chunk(dA, dBu.expand_as(dA), C_c, h_in)

    ys = []
    for s in range(0, L, chunk_size):
        e = min(s + chunk_size, L)
        args = (u_[:, :, s:e], delta_[:, :, s:e], Bx[..., s:e], Cx[..., s:e], h)
        y_c, h = checkpoint(chunk_fn, *args, use_reentrant=False) if use_ckpt else chunk_fn(*args)
        ys.append(y_c)
    y = torch.cat(ys, dim=2) if ys else u_.new_zeros(b, d, 0)
    if D is not None:
        y = y + D.to(ctype)[:, None] * u_
    if z is not None:
        y = y * F.silu(z.to(ctype))
    y = y.to(dtype_in)
    return (y, h) if return_last_state else y


def selective_scan_loop(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The recurrence written as a plain float64 loop over positions: slow, obviously right; tests only."""
    f = torch.float64
    b, d, L = u.shape
    dt = delta.to(f) + (delta_bias.to(f)[:, None] if delta_bias is not None else 0)
    if delta_softplus:
        dt = F.softplus(dt)
    Bx, Cx = _expand_groups(B.to(f), d), _expand_groups(C.to(f), d)
    h = initial_state.to(f) if initial_state is not None else torch.zeros(b, d, A.shape[-1], dtype=f)
    h = h.to(u.device)
    ys = []
    for t in range(L):
        h = (
            torch.exp(dt[:, :, t, None] * A.to(f)) * h
            + (dt[:, :, t] * u[:, :, t].to(f))[:, :, None] * Bx[:, :, :, t]
        )
        ys.append((h * Cx[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=2) if ys else u.new_zeros(b, d, 0, dtype=f)
    if D is not None:
        y = y + D.to(f)[:, None] * u.to(f)
    if z is not None:
        y = y * F.silu(z.to(f))
    return (y, h) if return_last_state else y
