"""One selective-scan forward and backward at a given size, for a profiler (ncu) to look at.

    ncu --clock-control none --kernel-name regex:_scan_bwd_kernel --launch-skip 1 --launch-count 1 \
        --set full python benchmarks/profile_scan.py --log2 18

The first call compiles and warms up (skip it with --launch-skip 1); the second is the one to read.
Registers and spills: benchmarks/compile_scan.py (no GPU) or bench_kernels.py's "kernel resources".
"""

from __future__ import annotations

import argparse

import torch
from mamba_dna.kernels import selective_scan_triton as sst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log2", type=int, default=18, help="log2 of the length")
    ap.add_argument("--d", type=int, default=1536)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    g = torch.Generator(device="cuda").manual_seed(0)
    L, d, n = 2**args.log2, args.d, args.n

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, device="cuda", generator=g) * scale).to(dtype).requires_grad_()

    u, delta, z = rnd(1, d, L), rnd(1, d, L, scale=0.5), rnd(1, d, L)
    B, C = rnd(1, n, L), rnd(1, n, L)
    A = -torch.arange(1, n + 1, device="cuda", dtype=torch.float32).repeat(d, 1).requires_grad_()
    D = torch.ones(d, device="cuda", requires_grad=True)
    bias = torch.full((d,), -4.0, device="cuda", requires_grad=True)
    dy = torch.randn(1, d, L, device="cuda", generator=g).to(dtype)
    for _ in range(args.repeats):
        y = sst.selective_scan_triton(u, delta, A, B, C, D, z, bias, delta_softplus=True)
        y.backward(dy)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
