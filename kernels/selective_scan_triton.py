"""Triton selective scan (Mamba-1 S6), forward and backward, with the semantics of ``selective_scan_fn``.

    dt_t = softplus(delta_t + delta_bias)      h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t
    y_t  = (C_t . h_t + D u_t) * silu(z_t)

Design (numbers and the alternatives that lost in benchmarks/kernel_notes.md)
---------------------------------------------------------------------------
One program owns ``BD`` channels of one (batch, B/C group) and walks the whole length in chunks of
``T = K * P`` positions, keeping the state of every (channel, state) pair in fp32 registers between
chunks. Inside a chunk the recurrence is an inclusive ``tl.associative_scan`` over (decay, input)
pairs; the state that enters the chunk is folded into the first pair, so the scan output *is* the state.
The loads of chunk k + 1 are issued before chunk k is computed (software pipelining by hand).

The work sits in a 4-d register tile ``(T, NL, BD, S)``: time, states spread over lanes, channels,
states held by one thread (state ``n = l * S + s``). Triton lays a tile out after its loads, so every
load and store is written with the full 4-d shape (broadcast pointers where a tensor lacks a
dimension) and the compiler picks one layout for all of them: ``K`` consecutive positions per thread
(one 16-byte load), ``P`` lanes along time, ``NL`` lanes along states, the channels over warps (and
over the remaining lanes), ``S`` states in registers. The dimension order matters: triton 3.6's
coalescing pass gives lanes to the lowest dimensions after the contiguous one. This layout means

* the scan is sequential within a thread and needs log2(P) shuffle rounds across lanes;
* the reduction of ``C . h`` over states is in-thread except for log2(NL) shuffle rounds;
* the per-channel work (softplus, silu, bf16 conversion: 4 MUFU operations per position) is repeated
  ``NL`` times, not once per state.

On the GPU, log2 and reciprocals use the approximate MUFU instructions (``FAST``); the interpreter has no
libdevice and uses the exact ones. Only the state entering each chunk is saved for the backward pass,
fp32, laid out (batch, n_chunks, d, n) so that each program writes one contiguous run per chunk;
nothing of size (batch, d, length, n) exists.

The backward pass walks the chunks in reverse. It reloads the chunk's entering state, recomputes the
chunk's states with the same scan, and runs the adjoint recurrence

    lambda_t = C_t g_t + exp(dt_{t+1} A) lambda_{t+1}        (g = dL/dy before the gate)

as a *forward* scan over the chunk in reverse order (triton 3.6's ``reverse=True`` costs 16-20
shuffles per element). The reversal is cheap: ``tl.flip`` folds to register renaming within a thread
and costs one shuffle per lane bit across lanes; per-channel values are flipped (shared by a thread's
S states), C is re-read with the lanes in reverse order and reversed in registers, and lambda is
flipped back once. The decay of the *next* position comes from a second, shifted read of delta. The
term that needs h_{t-1} uses exp(dt_t A) h_{t-1} = h_t - dt_t B_t u_t, so no exclusive scan is needed.
dB and dC sum over channels: each program reduces its channels and adds the (T, n) result to an fp32
buffer with relaxed atomics (so dB and dC are not bitwise deterministic; every other gradient is).
dA, dD and d(delta_bias) are per-batch partial sums that the host adds up.

Segments: with batch 1 there may be too few programs to fill the GPU evenly (how many an SM holds is
counted from the compiled kernel's registers), so the length is then also cut into segments that run in
parallel (``_segments`` decides; ``SEGMENTED``). Because A does not depend on the position, a segment
maps h -> exp(A sum dt) h + h_end, with h_end its end state from a zero start, and the adjoint mu
composes the same way backwards. Forward: pass 1 runs every segment from zero (the first from the
initial state) and writes its (h_end, sum dt); pass 2 (``_scan_fwd_fix_kernel``) composes the summaries
before each segment into its entering state h_in and adds exp(A s_t) h_in to the outputs and saved
states, stopping once that factor has decayed below 2^-30, so the second pass is one exponential per
element over (usually) a fraction of the segment instead of a second scan. Backward: a first launch
(``SUMMARY``) gives each segment's adjoint summary, and the main launch composes the summaries after its
own segment, then runs its chunks as above.

Offsets: every pointer offset is computed in int64, starting from program ids converted with
``.to(tl.int64)``; positions within the length stay int32 (they are < L). At length 2^20 a
(batch, d, length) tensor passes 2^31 elements once batch * d > 2048, and int32 offsets silently wrap
(mamba_ssm issue 1015).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def _affine_combine(a1, b1, a2, b2):
    """Compose h -> a1 h + b1, then h -> a2 h + b2 (a1 is the earlier step in scan order)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _log2(x, FAST: tl.constexpr):
    if FAST:
        return libdevice.fast_log2f(x)  # lg2.approx: one MUFU op, relative error 2^-22
    else:
        return tl.log2(x)


@triton.jit
def _rcp(x, FAST: tl.constexpr):
    if FAST:
        return libdevice.fast_dividef(
            tl.full(x.shape, 1.0, tl.float32), x
        )  # div.approx: one MUFU rcp, ~2 ulp
    else:
        return 1.0 / x


@triton.jit
def _softplus(x, FAST: tl.constexpr):
    """softplus(x) = log1p(exp(x)), and x itself above 20 as in mamba_ssm.

    log1p(e) is a five-term series where 1 + e would lose e's low bits (e < 1/16; dt near 1e-3 is
    common), and log2(1 + e) above, so both branches stay within ~2e-7 relative error.
    """
    e = tl.exp2(x * 1.4426950408889634)
    series = e * (1.0 - e * (0.5 - e * (0.33333334 - e * (0.25 - e * 0.2))))
    lg = _log2(1.0 + e, FAST) * 0.6931471805599453
    return tl.where(x > 20.0, x, tl.where(e < 0.0625, series, lg))


@triton.jit
def _sigmoid(x, FAST: tl.constexpr):
    return _rcp(1.0 + tl.exp2(-x * 1.4426950408889634), FAST)


@triton.jit
def _rev_in_thread(x, P: tl.constexpr, K: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, D3: tl.constexpr):
    """Reverse each run of K positions along axis 0 (the positions one thread holds): free in registers."""
    return tl.reshape(tl.flip(tl.reshape(x, (P, K, D1, D2, D3)), 1), (P * K, D1, D2, D3))


@triton.jit
def _program_tile(
    d,
    L,
    n,
    dpg,
    n_groups,
    K: tl.constexpr,
    P: tl.constexpr,
    NL: tl.constexpr,
    S: tl.constexpr,
    BD: tl.constexpr,
):
    """Index tiles of one program (a channel block of one batch x group), shared by all three scan kernels.

    int64 from the program ids on, so every offset built from these inherits it (module docstring).
    Returns (bidx, ch, t, st, lane0, zero_l, cmask, csmask, row, bc_row, state_off), all in the 4-d
    (T, NL, BD, S) shape the loads use.
    """
    pid_c = tl.program_id(0).to(tl.int64)
    pid_bg = tl.program_id(1).to(tl.int64)
    bidx = pid_bg // n_groups
    cg = pid_c * BD + tl.arange(0, BD)[None, None, :, None]  # channel within its group
    ch = (pid_bg % n_groups) * dpg + cg
    t = tl.arange(0, K * P)[:, None, None, None]
    st = tl.arange(0, NL)[None, :, None, None] * S + tl.arange(0, S)[None, None, None, :]
    lane0 = tl.arange(0, NL)[None, :, None, None] == 0
    zero_l = tl.zeros((1, NL, 1, 1), dtype=tl.int64)
    zero_c = tl.zeros((1, 1, BD, 1), dtype=tl.int64)
    cmask = cg < dpg
    csmask = cmask & (st < n)
    row = (bidx * d + ch) * L + zero_l  # (b, c, 0) in u / delta / z / y, broadcast over state lanes
    bc_row = (pid_bg * n + st) * L + zero_c  # (b, group, state, 0) in B / C, broadcast over channels
    state_off = ch * n + st  # (c, state) inside one (d, n) slab
    return bidx, ch, t, st, lane0, zero_l, cmask, csmask, row, bc_row, state_off


@triton.jit
def _compose_segments(
    h, A2, dtsum_ptr, end_ptr, seg_row, j0, count, step, d, n, ch, zero_l, cmask, csmask, state_off
):
    """Carry h through segments j0, j0 + step, ... (count of them) by their summaries (sum dt, end state).

    A segment maps h -> exp(A sum(dt)) h + h_end (forward) and the adjoint mu the same way (backward).
    """
    for jj in range(0, count):
        j = j0 + jj * step
        ds = tl.load(dtsum_ptr + (seg_row + j) * d + ch + zero_l, mask=cmask, other=0.0)
        he = tl.load(end_ptr + (seg_row + j) * d * n + state_off, mask=csmask, other=0.0)
        h = tl.exp2(ds * A2) * h + he
    return h


@triton.jit
def _chunk_range(pid_s, seg_chunks, n_chunks, SEGMENTED: tl.constexpr):
    """The chunks [k_lo, k_hi) a program scans: its segment's, or every chunk of the length."""
    if SEGMENTED:
        k_lo = pid_s * seg_chunks
        k_hi = tl.minimum(k_lo + seg_chunks, n_chunks)
    else:
        k_lo = 0
        k_hi = n_chunks
    return k_lo, k_hi


@triton.jit
def _scan_fwd_kernel(
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    h0_ptr,
    y_ptr,
    last_ptr,
    states_ptr,
    hend_ptr,
    dtsum_ptr,
    d,
    L,
    n,
    dpg,
    n_groups,
    n_chunks,
    n_seg,
    seg_chunks,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr,
    SAVE_STATES: tl.constexpr,
    SEGMENTED: tl.constexpr,
    FAST: tl.constexpr,
    K: tl.constexpr,
    P: tl.constexpr,
    NL: tl.constexpr,
    S: tl.constexpr,
    BD: tl.constexpr,
):
    T: tl.constexpr = K * P
    bidx, ch, t, st, lane0, zero_l, cmask, csmask, row, bc_row, state_off = _program_tile(
        d, L, n, dpg, n_groups, K, P, NL, S, BD
    )

    # Padded channels and states get A = 0 and B = 0: decay 1, input 0, so they stay at zero.
    A2 = tl.load(A_ptr + ch * n + st, mask=csmask, other=0.0).to(tl.float32) * 1.4426950408889634
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch + zero_l, mask=cmask, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + ch + zero_l, mask=cmask, other=0.0).to(tl.float32)
    # This program's segment of the length: chunks [k_lo, k_hi). int32, as the backward explains.
    pid_s = tl.program_id(2)
    k_lo, k_hi = _chunk_range(pid_s, seg_chunks, n_chunks, SEGMENTED)
    seg_row = bidx * n_seg  # (b, segment 0) in the per-segment summaries
    # A segment other than the first starts from zero; _scan_fwd_fix_kernel adds what its true entering
    # state contributes once every segment's summary (end state, sum(dt)) is known.
    if HAS_H0:
        first = (st * 0 + pid_s) == 0  # as a tile: the interpreter refuses a scalar in a mask
        h = tl.load(h0_ptr + bidx * d * n + state_off, mask=csmask & first, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((1, NL, BD, S), dtype=tl.float32)
    if SEGMENTED:
        dt_sum = tl.zeros((1, NL, BD, 1), dtype=tl.float32)

    # Software pipelining by hand: the raw tiles of chunk k + 1 are loaded before chunk k is computed,
    # so a chunk's loads are in flight during the previous chunk's arithmetic (without this each chunk
    # waited out a full memory latency: 38.6 -> 28.5 ms at 2^20).
    t0 = k_lo * T + t
    m_n = cmask & (t0 < L)
    u_n = tl.load(u_ptr + row + t0, mask=m_n, other=0.0)
    d_n = tl.load(delta_ptr + row + t0, mask=m_n, other=0.0)
    if HAS_Z:
        z_n = tl.load(z_ptr + row + t0, mask=m_n, other=0.0)
    B_n = tl.load(B_ptr + bc_row + t0, mask=csmask & (t0 < L), other=0.0)
    C_n = tl.load(C_ptr + bc_row + t0, mask=csmask & (t0 < L), other=0.0)
    for k in range(k_lo, k_hi):
        if SAVE_STATES:
            tl.store(states_ptr + (bidx * n_chunks + k) * d * n + state_off, h, mask=csmask)
        tt = k * T + t
        m = cmask & (tt < L)
        u_c, d_c, B_c = u_n, d_n, B_n
        nxt = tt + T < L
        u_n = tl.load(u_ptr + row + tt + T, mask=cmask & nxt, other=0.0)
        d_n = tl.load(delta_ptr + row + tt + T, mask=cmask & nxt, other=0.0)
        B_n = tl.load(B_ptr + bc_row + tt + T, mask=csmask & nxt, other=0.0)
        C_c = C_n
        C_n = tl.load(C_ptr + bc_row + tt + T, mask=csmask & nxt, other=0.0)
        if HAS_Z:
            z_c = z_n
            z_n = tl.load(z_ptr + row + tt + T, mask=cmask & nxt, other=0.0)
        u = u_c.to(tl.float32)
        dt = d_c.to(tl.float32)
        if HAS_BIAS:
            dt += bias
        if SOFTPLUS:
            dt = _softplus(dt, FAST)
        # Positions past the end get dt = 0: decay 1 and input 0, so the state passes through them.
        dt = tl.where(m, dt, 0.0)
        Bt = B_c.to(tl.float32)
        dA = tl.exp2(dt * A2)
        x = (dt * u) * Bt
        x = tl.where(t == 0, dA * h + x, x)  # fold the entering state into the first step
        _, hs = tl.associative_scan((dA, x), 0, _affine_combine)
        h = tl.sum(tl.where(t == T - 1, hs, 0.0), axis=0, keep_dims=True)
        if SEGMENTED:
            dt_sum += tl.sum(dt, axis=0, keep_dims=True)
        Ct = C_c.to(tl.float32)
        y = tl.sum(tl.sum(hs * Ct, axis=3, keep_dims=True), axis=1, keep_dims=True)
        if HAS_D:
            y += Dv * u
        if HAS_Z:
            zz = z_c.to(tl.float32)
            y *= zz * _sigmoid(zz, FAST)
        tl.store(y_ptr + row + tt, y.to(y_ptr.dtype.element_ty), mask=m & lane0)

    if SEGMENTED:
        tl.store(hend_ptr + (seg_row + pid_s) * d * n + state_off, h, mask=csmask)
        tl.store(dtsum_ptr + (seg_row + pid_s) * d + ch + zero_l, dt_sum, mask=cmask & lane0)
    else:
        tl.store(last_ptr + bidx * d * n + state_off, h, mask=csmask)


# Below this fraction of its entering value the carried state's contribution is dropped: 2^-30 of it
# is far under the rounding of the outputs (fp32: 2^-24 of y) and of the states the backward reloads.
_FIX_CUTOFF = 2.0**-30


@triton.jit
def _scan_fwd_fix_kernel(
    delta_ptr,
    A_ptr,
    C_ptr,
    z_ptr,
    bias_ptr,
    y_ptr,
    last_ptr,
    states_ptr,
    hend_ptr,
    dtsum_ptr,
    d,
    L,
    n,
    dpg,
    n_groups,
    n_chunks,
    n_seg,
    seg_chunks,
    cutoff,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    SAVE_STATES: tl.constexpr,
    FAST: tl.constexpr,
    K: tl.constexpr,
    P: tl.constexpr,
    NL: tl.constexpr,
    S: tl.constexpr,
    BD: tl.constexpr,
):
    """Pass 2 of a segmented forward: add the entering state's part to segment j = 1 + program_id(2).

    Pass 1 ran every segment from zero. The true state is h_t = h_t(from zero) + exp(A s_t) h_in, with
    s_t the sum of dt since the segment began and h_in composed from the summaries of the segments
    before, so y_t gains (C_t . exp(A s_t) h_in) silu(z_t) and each saved chunk state gains
    exp(A s) h_in: one exponential and a dot product per (channel, state, position) instead of a
    second scan. The walk stops once exp(A s) is below ``cutoff`` for every state with h_in != 0, which
    with decaying states is usually well before the segment's end.
    """
    T: tl.constexpr = K * P
    bidx, ch, t, st, lane0, zero_l, cmask, csmask, row, bc_row, state_off = _program_tile(
        d, L, n, dpg, n_groups, K, P, NL, S, BD
    )
    A2 = tl.load(A_ptr + ch * n + st, mask=csmask, other=0.0).to(tl.float32) * 1.4426950408889634
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch + zero_l, mask=cmask, other=0.0).to(tl.float32)
    seg = tl.program_id(2) + 1
    seg_row = bidx * n_seg
    # The state entering this segment: segment 0 started from the initial state, so composing the
    # summaries of segments 0 .. seg - 1 gives it.
    h_in = tl.zeros((1, NL, BD, S), dtype=tl.float32)
    args = (d, n, ch, zero_l, cmask, csmask, state_off)
    h_in = _compose_segments(h_in, A2, dtsum_ptr, hend_ptr, seg_row, 0, seg, 1, *args)
    if seg == n_seg - 1:
        last = _compose_segments(h_in, A2, dtsum_ptr, hend_ptr, seg_row, seg, 1, 1, *args)
        tl.store(last_ptr + bidx * d * n + state_off, last, mask=csmask)

    bound = cutoff * tl.abs(h_in)
    c = h_in  # the entering state's part of the state at the start of chunk k
    k = seg * seg_chunks
    k_hi = tl.minimum(k + seg_chunks, n_chunks)
    while (k < k_hi) & (tl.max(tl.abs(c) - bound) > 0.0):
        if SAVE_STATES:
            s_ptr = states_ptr + (bidx * n_chunks + k) * d * n + state_off
            tl.store(s_ptr, tl.load(s_ptr, mask=csmask, other=0.0) + c, mask=csmask)
        tt = k * T + t
        m = cmask & (tt < L)
        dt = tl.load(delta_ptr + row + tt, mask=m, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt += bias
        if SOFTPLUS:
            dt = _softplus(dt, FAST)
        dt = tl.where(m, dt, 0.0)
        ct = tl.exp2(tl.cumsum(dt, axis=0) * A2) * c
        Ct = tl.load(C_ptr + bc_row + tt, mask=csmask & (tt < L), other=0.0).to(tl.float32)
        dy = tl.sum(tl.sum(ct * Ct, axis=3, keep_dims=True), axis=1, keep_dims=True)
        if HAS_Z:
            zz = tl.load(z_ptr + row + tt, mask=m, other=0.0).to(tl.float32)
            dy *= zz * _sigmoid(zz, FAST)
        y = tl.load(y_ptr + row + tt, mask=m, other=0.0).to(tl.float32) + dy
        tl.store(y_ptr + row + tt, y.to(y_ptr.dtype.element_ty), mask=m & lane0)
        c = tl.sum(tl.where(t == T - 1, ct, 0.0), axis=0, keep_dims=True)
        k += 1


@triton.jit
def _scan_bwd_kernel(
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    states_ptr,
    dout_ptr,
    dlast_ptr,
    du_ptr,
    ddelta_ptr,
    dz_ptr,
    dA_ptr,
    dB_ptr,
    dC_ptr,
    dD_ptr,
    dbias_ptr,
    dh0_ptr,
    mend_ptr,
    dtsum_ptr,
    d,
    L,
    n,
    dpg,
    n_groups,
    n_chunks,
    n_seg,
    seg_chunks,
    seg0,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_DLAST: tl.constexpr,
    SEGMENTED: tl.constexpr,
    SUMMARY: tl.constexpr,
    FAST: tl.constexpr,
    K: tl.constexpr,
    P: tl.constexpr,
    NL: tl.constexpr,
    S: tl.constexpr,
    BD: tl.constexpr,
):
    T: tl.constexpr = K * P
    bidx, ch, t, st, lane0, zero_l, cmask, csmask, row, bc_row, state_off = _program_tile(
        d, L, n, dpg, n_groups, K, P, NL, S, BD
    )
    # The same positions with the lanes in reverse order; reversing each lane's K positions in
    # registers (_rev_in_thread) then gives the chunk in reverse time order without moving data
    # between lanes.
    t_rev_lanes = (P - 1 - t // K) * K + t % K
    smask = st < n
    pid_bg = tl.program_id(1).to(tl.int64)
    bc_row1 = (pid_bg * n + st) * L  # (1, NL, 1, S): dB / dC rows, one atomic per (state, position)

    A = tl.load(A_ptr + ch * n + st, mask=csmask, other=0.0).to(tl.float32)
    A2 = A * 1.4426950408889634
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch + zero_l, mask=cmask, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + ch + zero_l, mask=cmask, other=0.0).to(tl.float32)

    # This program's segment: chunks [k_lo, k_hi), walked in reverse. The chunk index stays int32 (the
    # positions derived from it are < L; offsets become int64 where they meet `row`): an int64 index made
    # every position tile int64 and doubled the spills. Unsegmented launches compile the loop exactly as
    # before segments existed (SEGMENTED=False): runtime bounds alone cost 60 more bytes of spills.
    pid_s = tl.program_id(2) + seg0
    k_lo, k_hi = _chunk_range(pid_s, seg_chunks, n_chunks, SEGMENTED)
    seg_row = bidx * n_seg
    # mu = exp(dt_t0 A) lambda_t0 of the chunk after the current one: what flows into the last
    # position of the current chunk. For the last chunk it is dL/d(last state).
    if SUMMARY:
        # Pass 1 of a segmented backward: the mu the segment passes to the one before it when nothing
        # flows in, and sum(dt); the segment maps mu -> exp(A sum(dt)) mu + mu_end.
        mu = tl.zeros((1, NL, BD, S), dtype=tl.float32)
        dt_sum = tl.zeros((1, NL, BD, 1), dtype=tl.float32)
    else:
        if HAS_DLAST:
            mu = tl.load(dlast_ptr + bidx * d * n + state_off, mask=csmask, other=0.0).to(tl.float32)
        else:
            mu = tl.zeros((1, NL, BD, S), dtype=tl.float32)
        if SEGMENTED:
            # Pass 2: compose the summaries of the segments after this one, last first.
            args = (d, n, ch, zero_l, cmask, csmask, state_off)
            mu = _compose_segments(
                mu, A2, dtsum_ptr, mend_ptr, seg_row, n_seg - 1, n_seg - 1 - pid_s, -1, *args
            )
    # Sums over time, kept per lane (P rows) and added up across lanes once at the end.
    dA_acc = tl.zeros((P, NL, BD, S), dtype=tl.float32)
    dD_acc = tl.zeros((P, NL, BD, 1), dtype=tl.float32)
    dbias_acc = tl.zeros((P, NL, BD, 1), dtype=tl.float32)

    for kk in range(0, k_hi - k_lo):
        k = k_hi - 1 - kk
        tt = k * T + t
        tmask = tt < L
        m = cmask & tmask
        m1 = cmask & (tt + 1 < L)
        # Statement order as in the unsegmented kernel: moving the loads changed ptxas's register
        # allocation (spills 182 -> 208-428 bytes, forward+backward 237 -> 276 ms at 2^20).
        if not SUMMARY:
            u = tl.load(u_ptr + row + tt, mask=m, other=0.0).to(tl.float32)
        draw = tl.load(delta_ptr + row + tt, mask=m, other=0.0).to(tl.float32)
        draw1 = tl.load(delta_ptr + row + tt + 1, mask=m1, other=0.0).to(tl.float32)
        if HAS_BIAS:
            draw += bias
            draw1 += bias
        if SOFTPLUS:
            dt = _softplus(draw, FAST)
            dt1 = _softplus(draw1, FAST)
        else:
            dt = draw
            dt1 = draw1
        dt = tl.where(m, dt, 0.0)
        dt1 = tl.where(m1, dt1, 0.0)  # decay 1 past the end: lambda there is the carried mu
        if SUMMARY:
            dA = tl.exp2(dt * A2)
            dt_sum += tl.sum(dt, axis=0, keep_dims=True)
            dout = tl.load(dout_ptr + row + tt, mask=m, other=0.0).to(tl.float32)
            if HAS_Z:
                zz = tl.load(z_ptr + row + tt, mask=m, other=0.0).to(tl.float32)
                g = dout * zz * _sigmoid(zz, FAST)
            else:
                g = dout
        else:
            Bt = tl.load(B_ptr + bc_row + tt, mask=csmask & tmask, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + bc_row + tt, mask=csmask & tmask, other=0.0).to(tl.float32)
            dA = tl.exp2(dt * A2)
            dtu = dt * u
            x = dtu * Bt

            # Recompute the chunk's states from the saved entering state.
            h_in = tl.load(states_ptr + (bidx * n_chunks + k) * d * n + state_off, mask=csmask, other=0.0)
            _, h = tl.associative_scan((dA, tl.where(t == 0, dA * h_in + x, x)), 0, _affine_combine)

            dout = tl.load(dout_ptr + row + tt, mask=m, other=0.0).to(tl.float32)
            if HAS_Z:
                zz = tl.load(z_ptr + row + tt, mask=m, other=0.0).to(tl.float32)
                sz = _sigmoid(zz, FAST)
                y = tl.sum(tl.sum(h * Ct, axis=3, keep_dims=True), axis=1, keep_dims=True)
                if HAS_D:
                    y += Dv * u
                dz = dout * y * sz * (1.0 + zz * (1.0 - sz))
                tl.store(dz_ptr + row + tt, dz.to(dz_ptr.dtype.element_ty), mask=m & lane0)
                g = dout * zz * sz
            else:
                g = dout

            # dC_t = sum_c g h_t over this program's channels, added to the fp32 buffer with atomics.
            tl.atomic_add(
                dC_ptr + bc_row1 + tt,
                tl.sum(g * h, axis=2, keep_dims=True),
                mask=smask & tmask,
                sem="relaxed",
            )

        # Adjoint lambda_t = C_t g_t + exp(dt_{t+1} A) lambda_{t+1}, scanned in reverse time order
        # (index i is position T - 1 - i); mu enters at i = 0. Per-channel values are reversed with
        # tl.flip (log2(P) shuffles per position, shared by the S states of a thread); C is re-read
        # with the lanes reversed instead of being flipped state by state.
        tr = k * T + t_rev_lanes
        C_r = tl.load(C_ptr + bc_row + tr, mask=csmask & (tr < L), other=0.0).to(tl.float32)
        b = _rev_in_thread(C_r, P, K, NL, BD, S) * tl.flip(g, 0)
        b = tl.where(t == 0, b + mu, b)
        dA1 = tl.exp2(tl.flip(dt1, 0) * A2)
        _, lam = tl.associative_scan((dA1, b), 0, _affine_combine)
        lam = tl.flip(lam, 0)  # back to forward time order
        mu = tl.sum(tl.where(t == 0, lam * dA, 0.0), axis=0, keep_dims=True)

        if not SUMMARY:
            tl.atomic_add(
                dB_ptr + bc_row1 + tt,
                tl.sum(lam * dtu, axis=2, keep_dims=True),
                mask=smask & tmask,
                sem="relaxed",
            )

            # G = lambda_t exp(dt_t A) h_{t-1}, using exp(dt_t A) h_{t-1} = h_t - x_t.
            G = lam * (h - x)
            dA_acc += tl.sum(tl.reshape(G * dt, (P, K, NL, BD, S)), axis=1)
            q = tl.sum(tl.sum(lam * Bt, axis=3, keep_dims=True), axis=1, keep_dims=True)
            r = tl.sum(tl.sum(G * A, axis=3, keep_dims=True), axis=1, keep_dims=True)
            du = dt * q
            if HAS_D:
                du += Dv * g
                dD_acc += tl.sum(tl.reshape(g * u, (P, K, NL, BD, 1)), axis=1)
            ddt = u * q + r
            if SOFTPLUS:
                ddt *= _sigmoid(draw, FAST)
            ddt = tl.where(m, ddt, 0.0)
            if HAS_BIAS:
                dbias_acc += tl.sum(tl.reshape(ddt, (P, K, NL, BD, 1)), axis=1)
            tl.store(du_ptr + row + tt, du.to(du_ptr.dtype.element_ty), mask=m & lane0)
            tl.store(ddelta_ptr + row + tt, ddt.to(ddelta_ptr.dtype.element_ty), mask=m & lane0)

    if SUMMARY:
        tl.store(mend_ptr + (seg_row + pid_s) * d * n + state_off, mu, mask=csmask)
        tl.store(dtsum_ptr + (seg_row + pid_s) * d + ch + zero_l, dt_sum, mask=cmask & lane0)
    else:
        # dL/dh_{-1} = exp(dt_0 A) lambda_0: the final mu of the first segment. The sums over time are
        # per-segment partials (rows b * n_seg + segment) that the host adds up.
        if SEGMENTED:
            if pid_s == 0:
                tl.store(dh0_ptr + bidx * d * n + state_off, mu, mask=csmask)
            acc_row = seg_row + pid_s
        else:
            tl.store(dh0_ptr + bidx * d * n + state_off, mu, mask=csmask)
            acc_row = bidx
        tl.store(dA_ptr + acc_row * d * n + state_off, tl.sum(dA_acc, axis=0, keep_dims=True), mask=csmask)
        if HAS_D:
            dD = tl.sum(dD_acc, axis=0, keep_dims=True)
            tl.store(dD_ptr + acc_row * d + ch + zero_l, dD, mask=cmask & lane0)
        if HAS_BIAS:
            dbias = tl.sum(dbias_acc, axis=0, keep_dims=True)
            tl.store(dbias_ptr + acc_row * d + ch + zero_l, dbias, mask=cmask & lane0)


class _Tile(NamedTuple):
    """How a program's register tile (T, NL, BD, S) maps onto a thread block; T = K * P."""

    K: int  # consecutive positions per thread: one load of up to 16 bytes of the per-position inputs
    P: int  # lanes along time
    NL: int  # lanes along states
    S: int  # states per thread (NL * S = n rounded up to a power of two)
    BD: int  # channels per program: one per warp, or 32 / (P * NL) per warp
    num_warps: int
    maxnreg: int | None  # register cap per thread (ptx .maxnreg), None for ptxas's choice

    def launch(self) -> dict:
        opts = {"K": self.K, "P": self.P, "NL": self.NL, "S": self.S, "BD": self.BD}
        opts["num_warps"] = self.num_warps
        if self.maxnreg is not None:
            opts["maxnreg"] = self.maxnreg
        return opts


# (P, NL, num_warps[, maxnreg]) for the forward and the backward kernel, keyed by the forward's K (the
# positions in 16 bytes of the widest per-position input). Both kernels must walk the same chunk
# T = K * P_forward, because the backward restarts each chunk from the state the forward saved there;
# the backward's K is T / P_backward. benchmarks/bench_kernels.py --tune times the alternatives;
# kernel_notes.md has the numbers.
TILES: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    8: ((8, 4, 4), (8, 4, 1)),  # bf16 / fp16: T = 64
    4: ((8, 4, 2), (8, 4, 1)),  # fp32: T = 32 (session 10 --tune: 2^20 fwd+bwd 282.6 -> 152.7 ms)
}


def set_tiles(tiles: dict) -> None:
    """Replace entries of ``TILES`` from their JSON form (string keys, lists), as the benchmarks pass them."""
    TILES.update({int(k): tuple(map(tuple, v)) for k, v in tiles.items()})


def positions_per_lane(k: int, p_forward: int, p: int) -> int | None:
    """K of a tile with ``p`` lanes along the forward's ``k * p_forward`` chunk; None where none fits."""
    chunk = k * p_forward
    kk = chunk // p
    return kk if kk * p == chunk and 1 <= kk <= k else None


def tile_key(dtype: torch.dtype) -> int:
    """The ``TILES`` key for per-position tensors of ``dtype``: positions in 16 bytes (8 bf16, 4 fp32)."""
    return 16 // dtype.itemsize


def _tiles(per_position: list[torch.Tensor], n: int) -> tuple[_Tile, _Tile]:
    """Forward and backward tiles for the tensors read once per position and state size ``n``."""
    k = min(tile_key(x.dtype) for x in per_position)  # the widest input sets K
    n_pad = 1 << max(0, math.ceil(math.log2(max(n, 1))))
    chunk = k * TILES[k][0][0]
    out = []
    for p, nl, num_warps, *cap in TILES[k]:
        kk = positions_per_lane(k, TILES[k][0][0], p)
        if kk is None:
            raise ValueError(
                f"TILES[{k}]: P = {p} cannot walk the forward's {chunk}-position chunk: "
                f"{chunk} / P must be a whole number of at most {k} positions"
            )
        nl = min(nl, n_pad)
        bd = num_warps * max(1, 32 // (p * nl))
        out.append(_Tile(kk, p, nl, n_pad // nl, bd, num_warps, cap[0] if cap else None))
    return out[0], out[1]


# Segmenting the length. With few (batch, channel) programs the GPU idles or runs a thin last wave, so the
# length is then cut into segments that run side by side, at the price of a second pass (the module
# docstring says which). Whether the last wave is thin depends on how many programs an SM holds, which the
# compiled kernel's registers decide: the unsegmented kernel is compiled (``warmup``) and its occupancy
# counted. H100, L = 2^20, fwd+bwd ms (benchmarks/kernel_notes.md, sessions 8 and 10): bf16 d = 1536, 8
# resident one-warp backward programs per SM (255 registers), 1.45 waves: 173-178 unsegmented, 155-162
# segmented. d = 512 (0.48 waves): 79-81 -> 54-56; d = 256: 76-80 -> 28-31. fp32 d = 1536: the backward
# holds 12 per SM (167 registers), 0.97 waves, and ran faster unsegmented (139.8 ms against 152.0 with its
# backward segmented as well); the fp32 forward (0.73 waves) 37.6 -> 28.4 ms segmented. Training's batch 4
# x d = 512 at 2^18 (1.94 waves) was 17-21% slower with 17 segments. So: segment when the last wave is less
# than 85% full and there are under two waves.
_FULL_WAVES = 2.0
_FULL_LAST_WAVE = 0.85
_WARPS_WANTED_PER_SM = 256
_MIN_CHUNKS_PER_SEGMENT = 8
_MAX_SEGMENTS = 32
_MAX_BLOCKS_PER_SM = 32  # sm_80 and sm_90; torch does not report it
_REG_ALLOC_UNIT = 256  # registers are given to a warp in units of 256
_SHARED_PER_BLOCK_RESERVED = 1024  # the driver's own shared memory per resident block
_ASSUMED_WARPS_PER_SM = 8  # when the compiled kernel cannot be asked (the session 8 backward's count)


class SMLimits(NamedTuple):
    """What one streaming multiprocessor holds (H100 values by default)."""

    regs: int = 65536
    warps: int = 64
    shared: int = 233472

    @classmethod
    def of(cls, props: object) -> SMLimits:
        """From ``torch.cuda.get_device_properties``; a field it lacks keeps the H100 value."""
        d = cls()
        threads = getattr(props, "max_threads_per_multi_processor", 32 * d.warps)
        return cls(
            getattr(props, "regs_per_multiprocessor", d.regs),
            threads // 32,
            getattr(props, "shared_memory_per_multiprocessor", d.shared),
        )


def resident_blocks(n_regs: int, shared: int, num_warps: int, sm: SMLimits = SMLimits()) -> int:
    """How many programs of ``num_warps`` warps, ``n_regs`` registers per thread and ``shared`` bytes of
    shared memory one SM runs at once (the CUDA occupancy calculator's rule)."""
    warp_regs = math.ceil(max(n_regs, 1) * 32 / _REG_ALLOC_UNIT) * _REG_ALLOC_UNIT
    by_regs = (sm.regs // warp_regs) // num_warps
    by_shared = sm.shared // (shared + _SHARED_PER_BLOCK_RESERVED)
    return max(1, min(by_regs, sm.warps // num_warps, by_shared, _MAX_BLOCKS_PER_SM))


def segments_wanted(n_chunks: int, programs: int, num_warps: int, per_sm: int, sms: int) -> int:
    """Segments to cut ``n_chunks`` into for ``programs`` programs of ``num_warps`` warps per segment, on
    ``sms`` SMs that each hold ``per_sm`` of them at once."""
    waves = programs / (per_sm * sms)
    if waves >= _FULL_WAVES or waves / math.ceil(waves) >= _FULL_LAST_WAVE:
        return 1
    want = min(math.ceil(_WARPS_WANTED_PER_SM * sms / (programs * num_warps)), _MAX_SEGMENTS)
    return max(1, min(want, n_chunks // _MIN_CHUNKS_PER_SEGMENT))


_PER_SM: dict[tuple, int] = {}


def _assumed_per_sm(num_warps: int) -> int:
    """Resident programs per SM when the compiled kernel cannot be asked."""
    return max(1, _ASSUMED_WARPS_PER_SM // num_warps)


def _spec(a: object) -> object:
    """What triton specialises a launch argument on (tensors: dtype and 16-byte alignment; ints: == 1
    and divisibility by 16), so equal keys give the same compiled kernel."""
    if isinstance(a, torch.Tensor):
        return a.dtype, a.data_ptr() % 16 == 0
    if isinstance(a, bool) or not isinstance(a, int):
        return a
    return a == 1, a % 16 == 0


def _per_sm(kernel: triton.JITFunction, args: tuple, kwargs: dict, num_warps: int, x: torch.Tensor) -> int:
    """Resident programs per SM of ``kernel`` compiled for this launch, cached per specialisation."""
    key = (kernel.fn.__name__, x.device.index, *map(_spec, args), *sorted(kwargs.items()))
    if key not in _PER_SM:
        # The probe only plans the launch, through CompiledKernel internals that triton may change: if
        # it fails, the scan still runs, with the assumed count (a real compile error recurs at launch).
        try:
            compiled = kernel.warmup(*args, grid=(1,), **kwargs)
            compiled = compiled.result() if hasattr(compiled, "result") else compiled  # async compile mode
            compiled._init_handles()
            n_regs, shared = compiled.n_regs, compiled.metadata.shared
        except Exception as e:
            warnings.warn(
                f"could not read the scan kernel's registers ({e!r}); "
                f"planning for {_ASSUMED_WARPS_PER_SM} resident warps per SM",
                stacklevel=3,
            )
            n_regs = None
        if not n_regs:
            _PER_SM[key] = _assumed_per_sm(num_warps)
        else:
            sm = SMLimits.of(torch.cuda.get_device_properties(x.device))
            _PER_SM[key] = resident_blocks(n_regs, shared, num_warps, sm)
    return _PER_SM[key]


def _segments(
    n_chunks: int,
    programs: int,
    num_warps: int,
    x: torch.Tensor,
    unsegmented: tuple[triton.JITFunction, tuple, dict] | None = None,
) -> tuple[int, int]:
    """(segments, chunks per segment) for a launch of ``programs`` programs per segment.

    ``unsegmented`` is (kernel, args, keyword args) of the one-segment launch, whose compiled registers
    say how many programs an SM holds. ``MAMBA_DNA_SCAN_SEGMENTS=N`` forces N (tests use it to run the
    segmented path on the interpreter).
    """
    forced = os.environ.get("MAMBA_DNA_SCAN_SEGMENTS")
    if forced:
        want = int(forced)
    elif x.is_cuda:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        per_sm = _per_sm(*unsegmented, num_warps, x) if unsegmented else _assumed_per_sm(num_warps)
        want = segments_wanted(n_chunks, programs, num_warps, per_sm, sms)
    else:
        want = 1
    want = max(1, min(want, n_chunks))
    per = math.ceil(n_chunks / want)
    return math.ceil(n_chunks / per), per


def _fast(x: torch.Tensor) -> bool:
    """Fast-math (approximate MUFU) helpers on the GPU; the interpreter has no libdevice."""
    return x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1"


def _contig(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.contiguous()


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor | None,
        z: torch.Tensor | None,
        delta_bias: torch.Tensor | None,
        initial_state: torch.Tensor | None,
        delta_softplus: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, d, L = u.shape
        n = A.shape[-1]
        # B, C as (batch, groups, n, length); a program's channels always share one group.
        B4 = B.unsqueeze(1) if B.dim() == 3 else B
        C4 = C.unsqueeze(1) if C.dim() == 3 else C
        n_groups = B4.shape[1]
        if d % n_groups or C4.shape[1] != n_groups:
            raise ValueError(f"d={d} must be a multiple of the B/C groups ({B4.shape[1]}, {C4.shape[1]})")
        u, delta, z, B4, C4 = (_contig(x) for x in (u, delta, z, B4, C4))
        A32 = A.float().contiguous()
        D32 = None if D is None else D.float().contiguous()
        bias32 = None if delta_bias is None else delta_bias.float().contiguous()
        h0 = None if initial_state is None else initial_state.float().contiguous()

        tile, _ = _tiles([x for x in (u, delta, z, B4, C4) if x is not None], n)
        n_chunks = triton.cdiv(L, tile.K * tile.P)
        save = any(ctx.needs_input_grad[:9])
        f32 = {"device": u.device, "dtype": torch.float32}
        y = torch.empty_like(u)
        last = torch.empty(batch, d, n, **f32)
        # The state entering each chunk, (batch, n_chunks, d, n) so a program writes contiguous runs.
        states = torch.empty(batch, n_chunks if save else 0, d, n, **f32)
        dpg = d // n_groups
        grid = (triton.cdiv(dpg, tile.BD), batch * n_groups)
        common = dict(
            HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
            SAVE_STATES=save, FAST=_fast(u), **tile.launch(),
        )  # fmt: skip
        kw = dict(HAS_D=D is not None, HAS_H0=h0 is not None, **common)

        def seg_buffers(n_seg: int) -> tuple[torch.Tensor, torch.Tensor]:  # (h_end, sum dt) per segment
            return torch.empty(batch, n_seg, d, n, **f32), torch.empty(batch, n_seg, d, **f32)

        def main_args(hend: torch.Tensor, dtsum: torch.Tensor, n_seg: int, seg_chunks: int) -> tuple:
            return (
                u, delta, A32, B4, C4, D32, z, bias32, h0, y, last, states, hend, dtsum,
                d, L, n, dpg, n_groups, n_chunks, n_seg, seg_chunks,
            )  # fmt: skip

        bufs = seg_buffers(1)
        one = (_scan_fwd_kernel, main_args(*bufs, 1, n_chunks), {**kw, "SEGMENTED": False})
        n_seg, seg_chunks = _segments(n_chunks, grid[0] * grid[1], tile.num_warps, u, one)
        hend, dtsum = bufs if n_seg == 1 else seg_buffers(n_seg)
        _scan_fwd_kernel[(*grid, n_seg)](
            *main_args(hend, dtsum, n_seg, seg_chunks), SEGMENTED=n_seg > 1, **kw
        )
        if n_seg > 1:
            _scan_fwd_fix_kernel[(*grid, n_seg - 1)](
                delta, A32, C4, z, bias32, y, last, states, hend, dtsum,
                d, L, n, dpg, n_groups, n_chunks, n_seg, seg_chunks, _FIX_CUTOFF, **common,
            )  # fmt: skip
        if save:
            ctx.save_for_backward(u, delta, A, B4, C4, D, z, delta_bias, initial_state, states)
            ctx.meta = (bool(delta_softplus), B.dim() == 3, C.dim() == 3)
        return y, last

    @staticmethod
    def backward(ctx, dy: torch.Tensor, dlast: torch.Tensor | None):
        u, delta, A, B4, C4, D, z, delta_bias, initial_state, states = ctx.saved_tensors
        softplus, b_was_3d, c_was_3d = ctx.meta
        batch, d, L = u.shape
        n = A.shape[-1]
        n_groups = B4.shape[1]
        dpg = d // n_groups
        dy = dy.contiguous()
        dlast = None if dlast is None else dlast.float().contiguous()
        A32 = A.float().contiguous()
        D32 = None if D is None else D.float().contiguous()
        bias32 = None if delta_bias is None else delta_bias.float().contiguous()

        _, tile = _tiles([x for x in (u, delta, z, B4, C4) if x is not None], n)
        n_chunks = states.shape[1]
        grid = (triton.cdiv(dpg, tile.BD), batch * n_groups)
        du = torch.empty_like(u)
        ddelta = torch.empty_like(delta)
        dz = torch.empty_like(z) if z is not None else None
        f32 = {"device": u.device, "dtype": torch.float32}
        dB = torch.zeros(B4.shape, **f32)  # atomics accumulate here
        dC = torch.zeros(C4.shape, **f32)
        dh0 = torch.empty(batch, d, n, **f32)
        kw = dict(
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=softplus, HAS_DLAST=dlast is not None, FAST=_fast(u), **tile.launch(),
        )  # fmt: skip

        def seg_buffers(n_seg: int) -> tuple[torch.Tensor | None, ...]:
            # Sums over time come back per (batch, segment) and are added up here, in a fixed order:
            # dA, dD, d(delta_bias), then each segment's adjoint summary (mu_end, sum dt).
            return (
                torch.empty(batch, n_seg, d, n, **f32),
                torch.empty(batch, n_seg, d, **f32) if D is not None else None,
                torch.empty(batch, n_seg, d, **f32) if delta_bias is not None else None,
                torch.empty(batch, n_seg, d, n, **f32),
                torch.empty(batch, n_seg, d, **f32),
            )

        def main_args(dA, dD, dbias, mend, dtsum, n_seg: int, seg_chunks: int, summary: bool) -> tuple:
            return (
                u, delta, A32, B4, C4, D32, z, bias32, states, dy, dlast,
                du, ddelta, dz, dA, dB, dC, dD, dbias, dh0, mend, dtsum,
                d, L, n, dpg, n_groups, n_chunks, n_seg, seg_chunks, 1 if summary else 0,
            )  # fmt: skip

        bufs = seg_buffers(1)
        one = (
            _scan_bwd_kernel,
            main_args(*bufs, 1, n_chunks, False),
            {**kw, "SEGMENTED": False, "SUMMARY": False},
        )
        n_seg, seg_chunks = _segments(n_chunks, grid[0] * grid[1], tile.num_warps, u, one)
        if n_seg > 1:
            bufs = seg_buffers(n_seg)
        dA, dD, dbias = bufs[:3]
        for summary in [True, False] if n_seg > 1 else [False]:
            # The summary pass skips the first segment: no segment before it needs its summary.
            _scan_bwd_kernel[(*grid, n_seg - 1 if summary else n_seg)](
                *main_args(*bufs, n_seg, seg_chunks, summary), SEGMENTED=n_seg > 1, SUMMARY=summary, **kw
            )
        dB = dB.squeeze(1) if b_was_3d else dB
        dC = dC.squeeze(1) if c_was_3d else dC
        return (
            du,
            ddelta,
            dA.sum((0, 1)).to(A.dtype),
            dB.to(B4.dtype),
            dC.to(C4.dtype),
            None if D is None else dD.sum((0, 1)).to(D.dtype),
            dz,
            None if delta_bias is None else dbias.sum((0, 1)).to(delta_bias.dtype),
            None if initial_state is None else dh0.to(initial_state.dtype),
            None,
        )


def selective_scan_triton(
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
    """Selective scan in Triton; shapes and semantics as :func:`mamba_dna.kernels.selective_scan`.

    Differentiable in every tensor input, ``initial_state`` included, and through the returned last
    state, so a long sequence can be processed in pieces with the state carried between calls.
    """
    if A.is_complex():
        raise ValueError("selective_scan_triton supports real A only")
    if u.shape[-1] == 0:
        batch, d, _ = u.shape
        h = initial_state if initial_state is not None else u.new_zeros(batch, d, A.shape[-1])
        return (u.new_empty(u.shape), h.float()) if return_last_state else u.new_empty(u.shape)
    y, last = _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus)
    return (y, last) if return_last_state else y
