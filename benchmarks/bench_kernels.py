"""GPU check and benchmark of the Triton kernels: selective scan (forward, forward+backward), causal conv1d.

One command on a CUDA machine:

    python benchmarks/bench_kernels.py                    # check, then time L = 2^10 .. 2^22
    python benchmarks/bench_kernels.py --quick            # L = 2^10, 2^16, 2^20, bf16 only
    python benchmarks/bench_kernels.py --tune bf16        # also time the scan's tile alternatives
    python benchmarks/bench_kernels.py --segments 512x20  # also time forced length segmentations

1. Measures a plain device-to-device copy (bytes read + written per second): the memory ceiling.
2. Checks the Triton selective scan on the GPU against the PyTorch reference and the float64 loop
   (output, last state and every input gradient, relative norm), and the other Triton ops in
   mamba_dna.kernels (causal_conv1d, causal_conv1d_update, selective_state_update, rms_norm) against
   their references; a failure is reported and the run goes on.
3. Times, for batch 1, d = 1536 (768 at 2^22), n = 16, with z, D, delta_bias and softplus: the scan's
   forward and forward+backward (median of CUDA-event timings after warm-up), the extra peak memory of
   one forward+backward, the forward's effective bandwidth (read u, delta, z, B, C; write y) as a
   fraction of the copy, the PyTorch reference beside it up to 2^16, and causal_conv1d (width 4, silu).

Prints a compact table last; writes bench_kernels.json and bench_kernels.log into $OUT (or --out).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def _import_kernels():
    """mamba_dna.kernels, installed or straight from this checkout (kernels/ maps to mamba_dna.kernels)."""
    try:
        return importlib.import_module("mamba_dna.kernels")
    except ImportError:
        sys.path.insert(0, str(ROOT))
        spec = importlib.util.spec_from_file_location(
            "mamba_dna.kernels",
            ROOT / "kernels" / "__init__.py",
            submodule_search_locations=[str(ROOT / "kernels")],
        )
        mod = importlib.util.module_from_spec(spec)
        sys.modules["mamba_dna.kernels"] = mod
        spec.loader.exec_module(mod)
        return mod


K = _import_kernels()
SST = importlib.import_module("mamba_dna.kernels.selective_scan_triton")
DEV = "cuda"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


class Tee(io.TextIOBase):
    """Print to the terminal and keep a copy for the log file."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, s: str) -> int:
        sys.__stdout__.write(s)
        sys.__stdout__.flush()
        self.parts.append(s)
        return len(s)


def cuda_time(fn: Callable[[], Any], budget_s: float = 1.0, max_reps: int = 30) -> float:
    """Median milliseconds of ``fn`` by CUDA events, after one warm-up call, within about ``budget_s``."""
    fn()
    torch.cuda.synchronize()
    times: list[float] = []
    t_start = time.perf_counter()
    while len(times) < max_reps and (len(times) < 3 or time.perf_counter() - t_start < budget_s):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def copy_bandwidth() -> float:
    """GB/s of a 2 GiB device-to-device copy, bytes read plus bytes written."""
    src = torch.empty(2**29, device=DEV, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    ms = cuda_time(lambda: dst.copy_(src), budget_s=1.0)
    return 2 * 2**31 / (ms * 1e-3) / 1e9


def scan_inputs(b: int, d: int, n: int, L: int, dtype: torch.dtype, seed: int, groups: int = 0) -> dict:
    """Inputs in the ranges a trained Mamba sees: dt = softplus(delta + bias) around 0.05, A in [-16, -1]."""
    g = torch.Generator(device=DEV).manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0, dt=torch.float32):
        return (torch.randn(*shape, generator=g, device=DEV) * scale + shift).to(dt)

    bc = (b, groups, n, L) if groups else (b, n, L)
    return {
        "u": rnd(b, d, L, dt=dtype),
        "delta": rnd(b, d, L, scale=0.5, dt=dtype),
        "A": -torch.exp(torch.rand(d, n, generator=g, device=DEV) * math.log(16.0)),
        "B": rnd(*bc, dt=dtype),
        "C": rnd(*bc, dt=dtype),
        "D": rnd(d),
        "z": rnd(b, d, L, dt=dtype),
        "delta_bias": rnd(d, scale=0.5, shift=-3.0),
        "initial_state": rnd(b, d, n),
    }


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def scan_outputs(fn, inp: dict, gy: torch.Tensor, gh: torch.Tensor, cast=None) -> dict:
    """y, last state and the gradient of every tensor input (``cast`` maps inputs first, e.g. to fp64)."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inp.items()}
    args = {k: (cast(v) if cast else v) for k, v in leaves.items()}
    y, last = fn(**args, delta_softplus=True, return_last_state=True)
    loss = (y.double() * gy.double()).sum() + (last.double() * gh.double()).sum()
    names = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[k] for k in names])
    return {"y": y, "last": last} | {"d" + k: g for k, g in zip(names, grads, strict=True)}


# (batch, d, n, length, dtype, B/C groups, oracle): short cases against the float64 loop, long ones
# against the fp32 reference; odd lengths and grouped B/C included.
SCAN_CHECKS = [
    (2, 64, 16, 1, torch.float32, 0, "loop"),
    (2, 64, 16, 7, torch.bfloat16, 0, "loop"),
    (2, 64, 16, 1000, torch.float32, 0, "loop"),
    (1, 48, 16, 2049, torch.bfloat16, 0, "loop"),
    (2, 64, 16, 1000, torch.float16, 0, "loop"),
    (2, 96, 16, 777, torch.float32, 3, "loop"),  # grouped B/C, odd length
    (2, 256, 16, 4096, torch.bfloat16, 0, "ref"),
    (1, 256, 16, 16384 + 5, torch.float32, 0, "ref"),
    (1, 1536, 16, 8192, torch.bfloat16, 0, "ref"),
]


@contextlib.contextmanager
def forced_segments(n: int | None):
    """Force the scan's length segmentation (None: its own choice), as MAMBA_DNA_SCAN_SEGMENTS does."""
    old = os.environ.pop("MAMBA_DNA_SCAN_SEGMENTS", None)
    if n is not None:
        os.environ["MAMBA_DNA_SCAN_SEGMENTS"] = str(n)
    try:
        yield
    finally:
        os.environ.pop("MAMBA_DNA_SCAN_SEGMENTS", None)
        if old is not None:
            os.environ["MAMBA_DNA_SCAN_SEGMENTS"] = old


# The same cases again with the length forcibly cut into segments (checks pass 1 + pass 2 on the GPU).
SEGMENT_CHECKS = [(5, 1), (16, 1), (3, 2)]  # (segments, index into SCAN_CHECKS from the end)


def check_scan(log: list[dict]) -> None:
    """The Triton scan against the float64 loop (short) and the fp32 reference (longer), on the GPU."""
    # Fast-math exp2/log2/rcp put fp32 near 1e-6; bf16 outputs and gradients round at 2^-9.
    tol = {torch.float32: 1e-4, torch.bfloat16: 1.5e-2, torch.float16: 3e-3}
    cases = [(None, i, c) for i, c in enumerate(SCAN_CHECKS)]
    cases += [(seg, len(SCAN_CHECKS) - back, SCAN_CHECKS[-back]) for seg, back in SEGMENT_CHECKS]
    for seg, i, (b, d, n, L, dtype, groups, oracle) in cases:
        inp = scan_inputs(b, d, n, L, dtype, seed=100 + i, groups=groups)
        gy, gh = torch.randn(b, d, L, device=DEV).to(dtype), torch.randn(b, d, n, device=DEV)
        with forced_segments(seg):
            got = scan_outputs(SST.selective_scan_triton, inp, gy, gh)
        if oracle == "loop":
            want = scan_outputs(K.selective_scan_loop, inp, gy, gh, cast=lambda v: v.double())
        else:
            want = scan_outputs(K.selective_scan_ref, inp, gy, gh)
        errs = {k: rel(got[k], want[k]) for k in want}
        worst = max(errs, key=errs.get)
        ok = all(e <= tol[dtype] for e in errs.values())
        name = (
            f"scan b={b} d={d} L={L} {str(dtype)[6:]}{' groups=' + str(groups) if groups else ''} vs {oracle}"
        ) + (f" ({seg} segments)" if seg else "")
        log.append({"check": name, "ok": ok, "worst": worst, "errors": errs})
        print(f"  {'ok  ' if ok else 'FAIL'} {name}: worst {worst} {errs[worst]:.1e} (tol {tol[dtype]:g})")


def check_peers(log: list[dict]) -> None:
    """The other engineer's Triton ops (through the public, dispatching functions) against their _ref."""

    def conv():
        x = torch.randn(2, 64, 1000, device=DEV, requires_grad=True)
        w = torch.randn(64, 4, device=DEV, requires_grad=True)
        bias = torch.randn(64, device=DEV, requires_grad=True)
        g = torch.randn(2, 64, 1000, device=DEV)
        outs = []
        for fn in (K.causal_conv1d, K.causal_conv1d_ref):
            y = fn(x, w, bias, "silu")
            outs.append([y, *torch.autograd.grad(y, (x, w, bias), g)])
        return {k: rel(a, b) for k, a, b in zip(("y", "dx", "dw", "dbias"), *outs, strict=True)}

    def conv_update():
        x, w = torch.randn(4, 64, device=DEV), torch.randn(64, 4, device=DEV)
        s1 = torch.randn(4, 64, 3, device=DEV)
        s2 = s1.clone()
        y1 = K.causal_conv1d_update(x, s1, w, None, "silu")
        y2 = K.causal_conv1d_update_ref(x, s2, w, None, "silu")
        return {"y": rel(y1, y2), "state": rel(s1, s2)}

    def state_update():
        b, d, n = 4, 64, 16
        args = [torch.randn(b, d, device=DEV), torch.randn(b, d, device=DEV) * 0.5]
        args += [
            -torch.rand(d, n, device=DEV) * 8,
            torch.randn(b, n, device=DEV),
            torch.randn(b, n, device=DEV),
        ]
        args += [torch.randn(d, device=DEV), torch.randn(b, d, device=DEV), torch.randn(d, device=DEV)]
        s1 = torch.randn(b, d, n, device=DEV)
        s2 = s1.clone()
        y1 = K.selective_state_update(s1, *args, True)
        y2 = K.selective_state_update_ref(s2, *args, True)
        return {"y": rel(y1, y2), "state": rel(s1, s2)}

    def rmsnorm():
        x = torch.randn(512, 768, device=DEV, requires_grad=True)
        r = torch.randn(512, 768, device=DEV, requires_grad=True)
        w = torch.randn(768, device=DEV, requires_grad=True)
        g = torch.randn(512, 768, device=DEV)
        outs = []
        for fn in (K.rms_norm, K.rms_norm_ref):
            y, s = fn(x, w, r, prenorm=True, residual_in_fp32=True)
            outs.append([y, s, *torch.autograd.grad((y * g).sum() + s.sum(), (x, w, r))])
        return {k: rel(a, b) for k, a, b in zip(("y", "residual", "dx", "dw", "dres"), *outs, strict=True)}

    for name, fn in (
        ("causal_conv1d", conv),
        ("causal_conv1d_update", conv_update),
        ("selective_state_update", state_update),
        ("rms_norm", rmsnorm),
    ):
        try:
            errs = fn()
            ok = all(e <= 1e-4 for e in errs.values())
            log.append({"check": name, "ok": ok, "errors": errs})
            print(
                f"  {'ok  ' if ok else 'FAIL'} {name}: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items())
            )
        except Exception as e:
            log.append({"check": name, "ok": False, "error": repr(e)})
            print(f"  FAIL {name}: {e!r}")
            traceback.print_exc(file=sys.stdout)


def scan_bytes(b: int, d: int, n: int, L: int, dtype: torch.dtype) -> int:
    """Bytes the forward must move: read u, delta, z (b, d, L) and B, C (b, n, L); write y (b, d, L)."""
    e = torch.empty(0, dtype=dtype).element_size()
    return (4 * b * d * L + 2 * b * n * L) * e


def time_scan(fn, b: int, d: int, n: int, L: int, dtype: torch.dtype, backward: bool = True) -> dict:
    """Forward ms, forward+backward ms and the extra peak memory of one forward+backward."""
    inp = scan_inputs(b, d, n, L, dtype, seed=7)
    inp.pop("initial_state")
    gy = torch.randn(b, d, L, device=DEV).to(dtype)
    big = L >= 2**20
    with torch.no_grad():
        fwd = cuda_time(lambda: fn(**inp, delta_softplus=True), budget_s=1.0, max_reps=10 if big else 30)
    out = {"fwd_ms": fwd}
    if backward:
        leaves = {k: v.requires_grad_(True) for k, v in inp.items()}

        def step():
            y = fn(**leaves, delta_softplus=True)
            return torch.autograd.grad(y, list(leaves.values()), gy)

        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        out["peak_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30
        out["fwdbwd_ms"] = cuda_time(step, budget_s=2.0 if big else 1.0, max_reps=5 if big else 30)
    return out


def time_conv(b: int, d: int, L: int, dtype: torch.dtype) -> dict:
    x = torch.randn(b, d, L, device=DEV).to(dtype).requires_grad_(True)
    w = torch.randn(d, 4, device=DEV).requires_grad_(True)
    bias = torch.randn(d, device=DEV).requires_grad_(True)
    g = torch.randn(b, d, L, device=DEV).to(dtype)
    with torch.no_grad():
        fwd = cuda_time(lambda: K.causal_conv1d(x, w, bias, "silu"))
    both = cuda_time(lambda: torch.autograd.grad(K.causal_conv1d(x, w, bias, "silu"), (x, w, bias), g))
    return {"conv_fwd_ms": fwd, "conv_fwdbwd_ms": both}


# Tile alternatives (P, NL, num_warps[, maxnreg]) that --tune times at TUNE_D x TUNE_L, after checking
# each at TUNE_CHECK = (batch, d, n, length) against the reference, keyed like TILES by the forward's K
# (8 for bf16 / fp16, 4 for fp32). A backward tile is paired with the chosen forward tile, so it must cut
# the forward's chunk (K * P) into P lanes of at most K positions. In the bf16 backward, (8, 4, 1) (built
# in since session 5) and (16, 2, 1) hold one channel per warp, which ptxas fits in 255 registers without
# the spills of (8, 2, 1); the 168-register caps trade spills for a third more resident warps. For fp32,
# compile_scan.py --dtype fp32 gives the one-warp (8, 4, 1) 167 registers and no spills, against 255 and
# 56 bytes of spills for the old 4-warp (8, 2, 4); session 10 timed it at 2^20: 151.9 against 277.7 ms
# fp32 forward+backward, and made it the built-in tile. Times in kernel_notes.md and RESULTS.md.
TUNE_FWD = {8: [(8, 4, 4), (8, 2, 2)], 4: [(8, 2, 4), (8, 4, 4), (8, 4, 2)]}
TUNE_BWD = {
    8: [(8, 2, 1), (8, 4, 1), (16, 2, 1), (8, 4, 1, 168), (16, 2, 1, 168)],
    4: [(8, 2, 4), (8, 4, 1), (16, 2, 1), (8, 4, 2), (16, 2, 2)],
}
TUNE_CHECK, TUNE_D, TUNE_L = (2, 64, 16, 1000), 1536, 2**20


def _trial(dtype: torch.dtype, which: str, tiles: tuple, log: list[dict]) -> float:
    """Check one (forward, backward) tile pair and time it; returns ms (inf when it fails the check)."""
    k = SST.tile_key(dtype)
    SST.TILES[k] = tiles
    row: dict[str, Any] = {"tune": which, "dtype": str(dtype)[6:], "tiles": tiles}
    try:
        b, d, n, L = TUNE_CHECK
        inp = scan_inputs(b, d, n, L, dtype, seed=3)
        gy, gh = torch.randn(b, d, L, device=DEV).to(dtype), torch.randn(b, d, n, device=DEV)
        got = scan_outputs(SST.selective_scan_triton, inp, gy, gh)
        want = scan_outputs(K.selective_scan_ref, inp, gy, gh)
        row["max_err"] = max(rel(got[x], want[x]) for x in want)
        t = time_scan(SST.selective_scan_triton, 1, TUNE_D, 16, TUNE_L, dtype, backward=which == "bwd")
        row["ms"] = t["fwd_ms"] if which == "fwd" else t["fwdbwd_ms"]
    except Exception as e:
        row["error"] = repr(e)[:300]
    log.append(row)
    print("  " + json.dumps({a: (round(v, 4) if isinstance(v, float) else v) for a, v in row.items()}))
    return row["ms"] if row.get("max_err", 1.0) < 2e-2 else math.inf


def tune(dtypes: list[torch.dtype], log: list[dict]) -> None:
    """Time the tile alternatives and keep the fastest pair for the rest of the run."""
    for dtype in dtypes:
        k = SST.tile_key(dtype)
        bwd0 = SST.TILES[k][1]

        def fits(f: tuple, b: tuple, k: int = k) -> bool:
            return SST.positions_per_lane(k, f[0], b[0]) is not None

        fwd = min(TUNE_FWD[k], key=lambda f: _trial(dtype, "fwd", (f, bwd0 if fits(f, bwd0) else f), log))
        bwd = min((b for b in TUNE_BWD[k] if fits(fwd, b)), key=lambda b: _trial(dtype, "bwd", (fwd, b), log))
        SST.TILES[k] = (fwd, bwd)
        print(f"  chosen for {str(dtype)[6:]}: TILES[{k}] = {SST.TILES[k]}")
        log.append({"chosen": str(dtype)[6:], "tiles": SST.TILES[k]})


@contextlib.contextmanager
def chosen_segments():
    """Record (kernel, resident programs per SM, segments) for each launch the scan plans."""
    seen: list[str] = []
    plan = SST._segments

    def recording(n_chunks, programs, num_warps, x, unsegmented=None):
        out = plan(n_chunks, programs, num_warps, x, unsegmented)
        if unsegmented is not None:
            kernel, args, kwargs = unsegmented
            per_sm = SST._per_sm(kernel, args, kwargs, num_warps, x)
            seen.append(f"{kernel.fn.__name__}: {programs} programs, {per_sm}/SM -> {out[0]} segments")
        return out

    SST._segments = recording
    try:
        yield seen
    finally:
        SST._segments = plan


def sweep_segments(spec: str, log: list[dict]) -> None:
    """Time the scan with the length cut into 1, 2, 4, ... segments and with the built-in choice."""
    for item in spec.split(","):
        d, lg, *dt = item.split("x")
        d, lg, dtype = int(d), int(lg), DTYPES[dt[0] if dt else "bf16"]
        for seg in (1, 2, 4, 8, 16, 32, None):
            with forced_segments(seg), chosen_segments() as chosen:
                row = {"segments": seg or "auto", "d": d, "log2L": lg, "dtype": str(dtype)[6:]}
                row |= time_scan(SST.selective_scan_triton, 1, d, 16, 2**lg, dtype)
            if seg is None:  # what the built-in rule picked: forward, then backward
                row["chosen"] = list(dict.fromkeys(chosen))
            log.append(row)
            print("  " + json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
            torch.cuda.empty_cache()


def kernel_resources() -> dict:
    """Registers and spills of every compiled variant of the scan kernels (when Triton exposes them)."""
    out = {}
    for name in ("_scan_fwd_kernel", "_scan_fwd_fix_kernel", "_scan_bwd_kernel"):
        with contextlib.suppress(Exception):
            for dev_cache in getattr(SST, name).device_caches.values():
                for key, kern in dev_cache[0].items():
                    kern._init_handles()
                    out[f"{name}:{hash(key) & 0xFFFF:04x}"] = {"regs": kern.n_regs, "spills": kern.n_spills}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="10,12,14,16,18,20,22", help="log2 of the lengths to time")
    ap.add_argument("--dtypes", default="bf16,fp32", help="comma-separated: bf16, fp32, fp16")
    ap.add_argument(
        "--d", type=int, default=1536, help="channels (half of it at 2^22, where d = 1536 does not fit)"
    )
    ap.add_argument("--quick", action="store_true", help="lengths 2^10, 2^16, 2^20 in bf16")
    ap.add_argument(
        "--tune", default="", help="dtypes (e.g. bf16) whose scan tile alternatives to time first"
    )
    ap.add_argument(
        "--segments",
        default="",
        help="DxLOG2L[xDTYPE] list (e.g. 1536x20,512x20,1536x20xfp32): time scans (bf16 unless named) "
        "at forced length segmentations first",
    )
    ap.add_argument("--no-check", action="store_true", help="skip the correctness checks")
    ap.add_argument(
        "--scan-tiles", default=None, help="JSON of the scan's TILES to use instead of the built-in ones"
    )
    ap.add_argument("--no-reference", action="store_true", help="skip timing the PyTorch reference")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    args = ap.parse_args()
    if args.quick:
        args.lengths, args.dtypes = "10,16,20", "bf16"
    if args.scan_tiles:
        SST.set_tiles(json.loads(Path(args.scan_tiles).read_text()))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tee = Tee()
    sys.stdout = tee
    res: dict[str, Any] = {"args": vars(args), "checks": [], "tune": [], "segments": [], "rows": []}
    try:
        if not torch.cuda.is_available():
            raise SystemExit("bench_kernels.py needs a CUDA GPU")
        import triton

        res["device"] = torch.cuda.get_device_name()
        res["versions"] = {"torch": torch.__version__, "triton": triton.__version__}
        print(f"{res['device']}  torch {torch.__version__}  triton {triton.__version__}")
        res["copy_gbs"] = copy_bandwidth()
        print(f"device-to-device copy: {res['copy_gbs']:.0f} GB/s (read + write)")
        dtypes = [DTYPES[x] for x in args.dtypes.split(",")]
        if not args.no_check:
            print("checks:")
            check_scan(res["checks"])
            check_peers(res["checks"])
        if args.tune:
            print(
                f"tile alternatives at d = {TUNE_D}, L = {TUNE_L} (fwd: forward ms; bwd: forward+backward ms):"
            )
            try:
                tune([DTYPES[x] for x in args.tune.split(",")], res["tune"])
            except Exception as e:
                print(f"  tuning stopped: {e!r}; timing with the built-in choices")
        if args.segments:
            print("length segmentation (fwd and fwd+bwd ms):")
            sweep_segments(args.segments, res["segments"])
        print("timing:")
        for dtype in dtypes:
            for lg in (int(x) for x in args.lengths.split(",")):
                L, d = 2**lg, (args.d // 2 if lg >= 22 else args.d)
                row: dict[str, Any] = {"dtype": str(dtype)[6:], "log2L": lg, "d": d}
                try:
                    row |= time_scan(SST.selective_scan_triton, 1, d, 16, L, dtype)
                    row["fwd_gbs"] = scan_bytes(1, d, 16, L, dtype) / (row["fwd_ms"] * 1e-3) / 1e9
                    row["fwd_pct_copy"] = 100 * row["fwd_gbs"] / res["copy_gbs"]
                except torch.cuda.OutOfMemoryError:
                    row["error"] = "out of memory"
                if lg <= 16 and "error" not in row and not args.no_reference:
                    ref = time_scan(K.selective_scan_ref, 1, d, 16, L, dtype)
                    row |= {
                        "ref_fwd_ms": ref["fwd_ms"],
                        "ref_fwdbwd_ms": ref["fwdbwd_ms"],
                        "ref_peak_gib": ref["peak_gib"],
                    }
                with contextlib.suppress(Exception):
                    row |= time_conv(1, d, L, dtype)
                torch.cuda.empty_cache()
                res["rows"].append(row)
                print(
                    "  " + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
                )
        res["resources"] = kernel_resources()
        res["tiles"] = {k: list(v) for k, v in SST.TILES.items()}
        # What bench_train.py --scan-tiles reads, so a training run in the same call uses the tuned tiles.
        (out_dir / "scan_tiles.json").write_text(json.dumps(res["tiles"]) + "\n")
        print_table(res)
    finally:
        sys.stdout = sys.__stdout__
        (out_dir / "bench_kernels.json").write_text(json.dumps(res, indent=1, default=str))
        (out_dir / "bench_kernels.log").write_text("".join(tee.parts))


def print_table(res: dict) -> None:
    bad = [c["check"] for c in res["checks"] if not c["ok"]]
    print(
        f"\nchecks: {len(res['checks']) - len(bad)}/{len(res['checks'])} passed"
        + (f"; FAILED: {bad}" if bad else "")
    )
    print(f"copy {res['copy_gbs']:.0f} GB/s; kernel resources {res.get('resources')}")
    hdr = "| dtype | L | d | fwd ms | GB/s | % copy | fwd+bwd ms | peak GiB | ref fwd | ref fwd+bwd | conv fwd | conv fwd+bwd |"
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))

    def f(row, k, fmt="{:.3f}"):
        return fmt.format(row[k]) if k in row else "-"

    for r in res["rows"]:
        cells = [
            r["dtype"],
            f"2^{r['log2L']}",
            str(r["d"]),
            f(r, "fwd_ms"),
            f(r, "fwd_gbs", "{:.0f}"),
            f(r, "fwd_pct_copy", "{:.0f}%"),
        ]
        cells += [
            f(r, "fwdbwd_ms"),
            f(r, "peak_gib", "{:.2f}"),
            f(r, "ref_fwd_ms"),
            f(r, "ref_fwdbwd_ms"),
            f(r, "conv_fwd_ms"),
            f(r, "conv_fwdbwd_ms"),
        ]
        print("| " + " | ".join(cells) + (f" | {r['error']}" if "error" in r else "") + " |")


if __name__ == "__main__":
    main()
