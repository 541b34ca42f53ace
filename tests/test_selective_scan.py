"""The Triton selective scan against the chunked PyTorch reference and the float64 loop, on the CPU.

Triton runs through its interpreter (TRITON_INTERPRET=1, set before anything imports triton). Every
case draws fresh inputs from its own seed and checks the output, the last state and the gradient of
every tensor input by relative norm, ||x - ref|| / ||ref||.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import numpy as np
import pytest
import torch
from mamba_dna.kernels import selective_scan, selective_scan_loop, selective_scan_ref
from mamba_dna.kernels.selective_scan_triton import selective_scan_triton
from triton.runtime import interpreter

# Relative-norm tolerances. fp32: the kernel accumulates in fp32 like the reference, so the distance
# to the float64 loop is rounding alone (~1e-7 seen; 2e-5 leaves room for long sums). bf16: outputs
# and input gradients are rounded to bf16 (relative step 2^-8), measured against the float64 loop
# run on the same bf16-rounded inputs.
TOL = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


@pytest.fixture(autouse=True, scope="module")
def _fast_interpreter():
    """Make the interpreter's generic scan and reduce fold along the axis once per position.

    Upstream they call the combine function once per *element*, which makes a (64, 2, 8, 8) tile
    take seconds. The replacement is the same left fold, vectorised over the other axes.
    """

    def generic_scan(self, input):
        datas = [np.moveaxis(x.handle.data, self.axis, 0) for x in input]
        outs = [np.empty_like(x) for x in datas]
        acc = None
        for i in range(datas[0].shape[0]):
            cur = tuple(
                self.to_tensor(np.ascontiguousarray(x[i]), a.dtype) for x, a in zip(datas, input, strict=True)
            )
            if acc is not None:
                r = self.combine_fn.fn(*acc, *cur)
                cur = r if isinstance(r, tuple) else (r,)
            acc = cur
            for o, a in zip(outs, acc, strict=True):
                o[i] = a.handle.data
        return [
            self.to_tensor(np.ascontiguousarray(np.moveaxis(o, 0, self.axis)), a.dtype)
            for o, a in zip(outs, input, strict=True)
        ]

    def generic_reduce(self, input):
        if self.axis is None:
            return interpreter.ReduceOps._upstream_generic_reduce(self, input)
        datas = [np.moveaxis(x.handle.data, self.axis, 0) for x in input]
        acc = None
        for i in range(datas[0].shape[0]):
            cur = tuple(
                self.to_tensor(np.ascontiguousarray(x[i]), a.dtype) for x, a in zip(datas, input, strict=True)
            )
            if acc is not None:
                r = self.combine_fn.fn(*acc, *cur)
                cur = r if isinstance(r, tuple) else (r,)
            acc = cur
        out = [np.asarray(a.handle.data) for a in acc]
        if self.keep_dims:
            out = [np.expand_dims(o, self.axis) for o in out]
        return [self.to_tensor(np.ascontiguousarray(o), a.dtype) for o, a in zip(out, input, strict=True)]

    # The tensors here are tiny: intra-op threads only add synchronisation (the float64 loop's backward
    # at L=2049 took 5 s on one thread and up to 27 s on two).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        if hasattr(interpreter, "ScanOps") and hasattr(interpreter, "ReduceOps"):
            mp.setattr(
                interpreter.ReduceOps,
                "_upstream_generic_reduce",
                interpreter.ReduceOps.generic_reduce,
                raising=False,
            )
            mp.setattr(interpreter.ScanOps, "generic_scan", generic_scan)
            mp.setattr(interpreter.ReduceOps, "generic_reduce", generic_reduce)
        yield
    torch.set_num_threads(threads)


def _inputs(
    seed: int,
    b: int,
    d: int,
    n: int,
    L: int,
    dtype: torch.dtype,
    *,
    groups: int = 0,
    z: bool = True,
    D: bool = True,
    bias: bool = True,
    softplus: bool = True,
    h0: bool = True,
) -> dict:
    """Fresh inputs in realistic ranges: dt = softplus(delta + bias) mostly in [1e-3, 0.2], A in [-16, -1]."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=g) * scale + shift

    bc_shape = (b, groups, n, L) if groups else (b, n, L)
    if softplus:
        delta = rnd(b, d, L, scale=0.5)
        delta_bias = rnd(d, scale=0.5, shift=-3.0)
    else:  # delta is dt itself and must stay positive
        delta = torch.rand(b, d, L, generator=g) * 0.1 + 1e-3
        delta_bias = torch.rand(d, generator=g) * 0.05
    inp = {
        "u": rnd(b, d, L).to(dtype),
        "delta": delta.to(dtype),
        "A": -torch.exp(torch.rand(d, n, generator=g) * np.log(16.0)),
        "B": rnd(*bc_shape).to(dtype),
        "C": rnd(*bc_shape).to(dtype),
        "D": rnd(d) if D else None,
        "z": rnd(b, d, L).to(dtype) if z else None,
        "delta_bias": delta_bias if bias else None,
        "initial_state": rnd(b, d, n) if h0 else None,
    }
    return {"inp": inp, "softplus": softplus, "gy": rnd(b, d, L).to(dtype), "gh": rnd(b, d, n)}


def _run(fn, case: dict, want_grads: bool = True):
    """y, last state and the gradients of every tensor input, all as float64."""
    inp = {
        k: (v.detach().clone().requires_grad_(want_grads) if v is not None else None)
        for k, v in case["inp"].items()
    }
    y, last = fn(**inp, delta_softplus=case["softplus"], return_last_state=True)
    out = {"y": y.double(), "last": last.double()}
    if want_grads:
        loss = (y.double() * case["gy"].double()).sum() + (last.double() * case["gh"].double()).sum()
        names = [k for k in NAMES if inp[k] is not None]
        grads = torch.autograd.grad(loss, [inp[k] for k in names])
        out |= {"d" + k: gr.double() for k, gr in zip(names, grads, strict=True)}
    return out


def _loop(**kw):
    """The float64 loop on the same (possibly bf16-rounded) values the kernel sees."""
    kw = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    return selective_scan_loop(**kw)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert torch.isfinite(a).all(), "non-finite values"
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _check(got: dict, want: dict, tol: float, what: str) -> None:
    assert got.keys() == want.keys()
    errors = {k: _rel(got[k], want[k]) for k in want}
    bad = {k: f"{e:.1e}" for k, e in errors.items() if not e <= tol}
    assert not bad, f"{what}: relative error above {tol:g} in {bad}"


@pytest.mark.parametrize(
    ("L", "dtype"),
    [
        (1, torch.float32),
        (1, torch.bfloat16),
        (7, torch.float32),
        (7, torch.bfloat16),
        (64, torch.float32),
        (64, torch.bfloat16),
        (1000, torch.float32),
        (1000, torch.bfloat16),
        (2049, torch.float32),
        (2049, torch.bfloat16),
        (64, torch.float16),
    ],
)
def test_matches_reference_and_float64_loop(L: int, dtype: torch.dtype) -> None:
    b, d = (1, 3) if L > 1000 else (2, 4)
    case = _inputs(1000 + L, b, d, 16, L, dtype)
    got = _run(selective_scan_triton, case)
    _check(got, _run(_loop, case), TOL[dtype], "vs float64 loop")
    _check(got, _run(selective_scan_ref, case), TOL[dtype], "vs chunked reference")


@pytest.mark.parametrize(
    "flags",
    [
        {"z": False, "D": False, "bias": False, "softplus": False, "h0": False},
        {"z": True, "D": False, "bias": False, "softplus": True, "h0": False},
        {"z": False, "D": True, "bias": True, "softplus": False, "h0": True},
        {"z": True, "D": True, "bias": False, "softplus": True, "h0": True},
    ],
    ids=["plain", "z-softplus", "D-bias-h0", "no-bias"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_optional_inputs(flags: dict, dtype: torch.dtype) -> None:
    case = _inputs(7, 2, 4, 8, 150, dtype, **flags)
    _check(_run(selective_scan_triton, case), _run(_loop, case), TOL[dtype], str(flags))


@pytest.mark.parametrize(
    ("d", "groups", "n", "dtype"),
    [
        (8, 2, 16, torch.float32),
        (6, 2, 5, torch.float32),
        (5, 1, 3, torch.float32),
        (32, 1, 16, torch.bfloat16),
    ],
    ids=["groups", "odd-n", "odd-d", "many-programs"],
)
def test_grouped_bc_and_odd_sizes(d: int, groups: int, n: int, dtype: torch.dtype) -> None:
    # groups=1 still passes B and C as (batch, 1, n, length); d=32 spreads the channels over several
    # programs, whose dB / dC contributions meet in the atomics.
    case = _inputs(11, 2, d, n, 130, dtype, groups=groups)
    _check(_run(selective_scan_triton, case), _run(_loop, case), TOL[dtype], f"d={d} groups={groups}")


def test_chunked_call_equals_one_call_including_gradients() -> None:
    case = _inputs(5, 2, 4, 16, 150, torch.float32)
    whole = _run(selective_scan_triton, case)

    inp = {k: v.detach().clone().requires_grad_(True) for k, v in case["inp"].items()}
    cut = 70  # not a multiple of the chunk
    first, second = (
        {k: v[..., sl] if k in ("u", "delta", "z", "B", "C") else v for k, v in inp.items()}
        for sl in (slice(0, cut), slice(cut, None))
    )
    y1, h1 = selective_scan_triton(
        **first | {"initial_state": inp["initial_state"]}, delta_softplus=True, return_last_state=True
    )
    y2, h2 = selective_scan_triton(
        **second | {"initial_state": h1}, delta_softplus=True, return_last_state=True
    )
    y = torch.cat([y1, y2], dim=-1)
    loss = (y.double() * case["gy"].double()).sum() + (h2.double() * case["gh"].double()).sum()
    grads = torch.autograd.grad(loss, [inp[k] for k in NAMES])
    pieces = {"y": y.double(), "last": h2.double()} | {
        "d" + k: g.double() for k, g in zip(NAMES, grads, strict=True)
    }
    _check(pieces, whole, 1e-6, "two halves with the state carried")


@pytest.mark.parametrize(
    ("segments", "L", "dtype"),
    [(2, 1000, torch.float32), (5, 1000, torch.float32), (3, 2049, torch.bfloat16), (40, 700, torch.float32)],
)
def test_segmented_length_equals_one_pass(
    monkeypatch: pytest.MonkeyPatch, segments: int, L: int, dtype: torch.dtype
) -> None:
    # On the GPU a long sequence with little batch x channel parallelism is cut into segments that
    # run side by side (forward: each from zero, then the entering state's part added; backward: adjoint
    # summaries first, then each segment from its composed entering adjoint). Force
    # it here: outputs, last state and every gradient (initial state included) must not change, and
    # both must match the float64 loop. 40 segments of 700 positions is one chunk or less each.
    case = _inputs(17 + segments, 2, 4, 16, L, dtype)
    monkeypatch.setenv("MAMBA_DNA_SCAN_SEGMENTS", "1")
    whole = _run(selective_scan_triton, case)
    monkeypatch.setenv("MAMBA_DNA_SCAN_SEGMENTS", str(segments))
    split = _run(selective_scan_triton, case)
    _check(split, whole, 1e-5 if dtype == torch.float32 else 1e-2, f"{segments} segments vs one")
    _check(split, _run(_loop, case), TOL[dtype], f"{segments} segments vs float64 loop")


@pytest.mark.parametrize("memory", ["long", "short"])
def test_segmented_scan_carries_slow_and_fast_decay(monkeypatch: pytest.MonkeyPatch, memory: str) -> None:
    # A later segment runs from zero and then adds exp(A s_t) h_in, walking until that factor is below
    # 2^-30 of h_in. Long memory (|A| dt ~ 1e-4: the factor stays near 1) walks every chunk of the
    # segment; short memory (|A| dt ~ 5) stops after the first. Both must equal one pass.
    case = _inputs(31, 1, 3, 16, 1500, torch.float32)
    scale = 1e-3 if memory == "long" else 50.0
    case["inp"]["A"] = -scale * torch.linspace(0.1, 1.0, 16).repeat(3, 1)
    monkeypatch.setenv("MAMBA_DNA_SCAN_SEGMENTS", "1")
    whole = _run(selective_scan_triton, case)
    monkeypatch.setenv("MAMBA_DNA_SCAN_SEGMENTS", "4")
    split = _run(selective_scan_triton, case)
    _check(split, whole, 1e-5, f"{memory} memory: 4 segments vs one")
    _check(split, _run(_loop, case), TOL[torch.float32], f"{memory} memory: 4 segments vs float64 loop")


def test_segment_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from mamba_dna.kernels.selective_scan_triton import _segments

    cpu = torch.zeros(1)
    monkeypatch.delenv("MAMBA_DNA_SCAN_SEGMENTS", raising=False)
    assert _segments(100, 4, 1, cpu) == (1, 100)  # never on the CPU unless forced
    monkeypatch.setenv("MAMBA_DNA_SCAN_SEGMENTS", "7")
    assert _segments(100, 4, 1, cpu) == (7, 15)  # 7 segments of 15 chunks, the last one of 10
    assert _segments(20, 4, 1, cpu) == (7, 3)
    assert _segments(3, 4, 1, cpu) == (3, 1)  # never more segments than chunks


def test_resident_programs_per_sm_on_an_h100() -> None:
    # Registers go to a warp in units of 256, 65,536 per SM, at most 64 warps: the register counts
    # compile_scan reports for the built-in tiles (kernel_notes.md) and what an SM holds of each.
    from mamba_dna.kernels.selective_scan_triton import SMLimits, resident_blocks

    assert resident_blocks(255, 0, 1) == 8  # bf16 backward
    assert resident_blocks(224, 0, 4) == 2  # bf16 forward: 9 warps' registers, two 4-warp programs
    assert resident_blocks(167, 0, 1) == 12  # fp32 backward
    assert resident_blocks(128, 0, 2) == 8  # fp32 forward
    assert resident_blocks(32, 0, 1) == 32  # the 32-block limit, not the 64 warps
    assert resident_blocks(32, 0, 4) == 16  # the 64-warp limit
    assert resident_blocks(64, 100_000, 1) == 2  # shared memory, with 1 KiB reserved per program
    assert resident_blocks(255, 0, 1, SMLimits(regs=32768)) == 4


class _Props:  # what torch.cuda.get_device_properties gives, without a GPU
    regs_per_multiprocessor = 65536
    max_threads_per_multi_processor = 1536
    shared_memory_per_multiprocessor = 102400


def test_sm_limits_from_device_properties() -> None:
    from mamba_dna.kernels.selective_scan_triton import SMLimits

    assert SMLimits.of(_Props()) == SMLimits(65536, 48, 102400)
    assert SMLimits.of(object()) == SMLimits()  # a torch without the fields: the H100's


def test_segments_wanted_on_an_h100() -> None:
    # The built-in choice at 2^20 (16,384 chunks) on 132 SMs (kernel_notes.md, sessions 8 and 10, has the
    # timings behind it): segment when under two waves leave the last one less than 85% full, aiming at
    # 256 warps per SM; short lengths keep >= 8 chunks per segment.
    from mamba_dna.kernels.selective_scan_triton import segments_wanted

    assert segments_wanted(16384, 1536, 1, 8, 132) == 22  # bf16 backward, d 1536: 1.45 waves
    assert segments_wanted(16384, 384, 4, 2, 132) == 22  # bf16 forward, 4 channels a program: 1.45 waves
    assert segments_wanted(16384, 1536, 1, 12, 132) == 1  # fp32 backward: 0.97 waves, faster whole
    assert segments_wanted(16384, 768, 2, 8, 132) == 22  # fp32 forward: 0.73 waves
    assert segments_wanted(16384, 512, 1, 8, 132) == 32  # d 512: 0.48 waves
    assert segments_wanted(16384, 512 * 4, 1, 8, 132) == 1  # 1.94 waves: segmenting cost 17-21% in training
    assert segments_wanted(16384, 512 * 8, 1, 8, 132) == 1
    assert segments_wanted(16384, 950, 1, 8, 132) == 1  # 0.90 waves
    assert segments_wanted(16384, 850, 1, 8, 132) == 32  # 0.80 waves
    assert segments_wanted(256, 512, 1, 8, 132) == 32
    assert segments_wanted(64, 512, 1, 8, 132) == 8
    assert segments_wanted(4, 512, 1, 8, 132) == 1


@pytest.mark.parametrize("bwd_tile", [(8, 2, 1), (16, 2, 1, 168)], ids=["P8-NL2", "P16-NL2-maxnreg"])
def test_backward_tile_alternatives(monkeypatch: pytest.MonkeyPatch, bwd_tile: tuple) -> None:
    # bench_kernels.py --tune times other backward tiles; each must give the built-in tile's numbers.
    # (16, 2, 1) walks the forward's 64-position chunk as 16 lanes of 4 positions instead of 8 of 8.
    from mamba_dna.kernels import selective_scan_triton as sst

    case = _inputs(23, 2, 4, 16, 130, torch.bfloat16)
    built_in, tile = _run(selective_scan_triton, case), sst.TILES[8][1]
    monkeypatch.setitem(sst.TILES, 8, (sst.TILES[8][0], bwd_tile))
    other = _run(selective_scan_triton, case)
    _check(other, built_in, 1e-2, f"backward tile {bwd_tile} vs {tile}")
    assert torch.equal(other["y"], built_in["y"])  # the forward did not change
    _check(other, _run(_loop, case), TOL[torch.bfloat16], f"backward tile {bwd_tile} vs float64 loop")


def test_incompatible_backward_tile_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from mamba_dna.kernels import selective_scan_triton as sst

    # P = 4 would need 16 positions per lane of the bf16 forward's 64-position chunk (at most K = 8).
    monkeypatch.setitem(sst.TILES, 8, (sst.TILES[8][0], (4, 2, 1)))
    with pytest.raises(ValueError, match="cannot walk"):
        sst._tiles([torch.zeros(1, dtype=torch.bfloat16)], 16)


def test_noncontiguous_inputs() -> None:
    case = _inputs(3, 2, 4, 8, 96, torch.float32)
    expected = _run(_loop, case)
    # The same values through strided views: (b, L, d) storage transposed, B/C with a gap per row.
    strided = dict(case)
    inp = dict(case["inp"])
    for k in ("u", "delta", "z"):
        inp[k] = inp[k].transpose(1, 2).contiguous().transpose(1, 2)
    for k in ("B", "C"):
        wide = torch.zeros(*inp[k].shape[:-1], 2 * inp[k].shape[-1])
        wide[..., ::2] = inp[k]
        inp[k] = wide[..., ::2]
    assert not inp["u"].is_contiguous() and not inp["B"].is_contiguous()
    strided["inp"] = inp
    _check(_run(selective_scan_triton, strided), expected, TOL[torch.float32], "strided views")


def test_empty_length_and_plain_output() -> None:
    case = _inputs(2, 1, 2, 4, 0, torch.float32)
    y, last = selective_scan_triton(**case["inp"], delta_softplus=True, return_last_state=True)
    assert y.shape == (1, 2, 0)
    assert torch.equal(last, case["inp"]["initial_state"])
    case = _inputs(2, 1, 2, 4, 9, torch.float32)
    y = selective_scan_triton(**case["inp"], delta_softplus=True)
    assert isinstance(y, torch.Tensor) and y.shape == (1, 2, 9)


def test_dispatch_uses_triton_when_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMBA_DNA_KERNELS", "triton")
    case = _inputs(4, 1, 4, 8, 40, torch.float32)
    _check(
        _run(selective_scan, case, want_grads=False),
        _run(_loop, case, want_grads=False),
        TOL[torch.float32],
        "dispatch",
    )
