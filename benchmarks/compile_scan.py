"""Compile the Triton scan kernels for sm_90 on a machine without a GPU; print registers, spills, SASS size.

A GPU-free proxy for register pressure, the thing that moved the backward's speed most (kernel_notes.md):
the same (bf16, d = 1536) specialisation the benchmarks launch, compiled to PTX by the installed Triton
and assembled by ``ptxas -v``. Use the device's Triton version for numbers that match it, e.g.

    pip install --no-deps --target /tmp/t36 triton==3.6.0
    PYTHONPATH=/tmp/t36 python benchmarks/compile_scan.py --ptxas /usr/local/cuda/bin/ptxas
    PYTHONPATH=/tmp/t36 python benchmarks/compile_scan.py --segmented       # the segmented variants
    PYTHONPATH=/tmp/t36 python benchmarks/compile_scan.py --dtype fp32 --bwd-tile 8,4,1
    PYTHONPATH=/tmp/t36 python benchmarks/compile_scan.py --file old_copy_of_selective_scan_triton.py

With triton 3.6 this reproduces the device's counts (forward 224 registers, no spills).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
import triton
from mamba_dna.kernels.selective_scan_triton import tile_key  # the K rule, also for --file copies
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ROOT = Path(__file__).resolve().parents[1]
PER_POSITION_ARGS = {  # of the --dtype element type; every other pointer is fp32
    "u_ptr",
    "delta_ptr",
    "B_ptr",
    "C_ptr",
    "z_ptr",
    "dout_ptr",
    "du_ptr",
    "ddelta_ptr",
    "dz_ptr",
    "y_ptr",
}
FLOAT_ARGS = {"cutoff"}
DIVISIBLE_ARGS = {"d", "L", "n", "dpg"}  # what the runtime's specialisation sees at d = 1536, L = 2^k


def compile_one(kern, const: dict, ptxas: str, keep: Path | None, io: str = "bf16") -> str:
    """Compile one variant (constexprs plus num_warps / maxnreg from ``const``); ptxas's resource line.

    ``io`` is the element type of the per-position tensors (PER_POSITION_ARGS).
    """
    const = dict(const)
    options = {"num_warps": const.pop("num_warps"), "maxnreg": const.pop("maxnreg", None)}
    names = list(inspect.signature(kern.fn).parameters)
    const = {k: v for k, v in const.items() if k in names}
    sig = {
        nm: "constexpr"
        if nm in const
        else (f"*{io}" if nm in PER_POSITION_ARGS else "*fp32")
        if nm.endswith("_ptr")
        else "fp32"
        if nm in FLOAT_ARGS
        else "i32"
        for nm in names
    }
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, nm in enumerate(names)
        if nm.endswith("_ptr") or nm in DIVISIBLE_ARGS
    }
    src = ASTSource(kern, sig, constexprs={(names.index(k),): v for k, v in const.items()}, attrs=attrs)
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]
    # Newer Triton writes a PTX ISA version that an older ptxas refuses; the code itself assembles.
    ptx = re.sub(r"^\.version \d+\.\d+", ".version 8.7", ptx, flags=re.M)
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "k.ptx"
        p.write_text(ptx)
        cubin = (keep or Path(tmp)) / f"{kern.fn.__name__}.cubin"
        r = subprocess.run(
            [ptxas, "-arch=sm_90a", "-v", str(p), "-o", str(cubin)], capture_output=True, text=True
        )
        info = " ".join(r.stderr.split())
        regs = re.search(r"Used (\d+) registers", info)
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", info)
        if not regs:
            return f"ptxas failed: {info[:300]}"
        out = f"{regs.group(1)} registers, spill stores/loads {spill.group(1)}/{spill.group(2)} bytes"
        dump = shutil.which("cuobjdump") or str(
            Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
        )
        if os.path.exists(dump):
            sass = subprocess.run([dump, "-sass", str(cubin)], capture_output=True, text=True).stdout
            n_instr = len(re.findall(r"/\*[0-9a-f]{4,}\*/", sass))  # each instruction has its address
            out += f", {n_instr} SASS instructions"
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", default=str(ROOT / "kernels" / "selective_scan_triton.py"))
    ap.add_argument("--ptxas", default=shutil.which("ptxas") or "ptxas")
    ap.add_argument(
        "--segmented", action="store_true", help="the variants that run when the length is segmented"
    )
    ap.add_argument("--keep", type=Path, default=None, help="directory to keep the .cubin files in")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="of u, delta, z, B, C, y")
    ap.add_argument("--fwd-tile", default=None, help="the forward's P,NL,num_warps[,maxnreg] (as TILES)")
    ap.add_argument(
        "--bwd-tile", default=None, help="the backward's P,NL,num_warps[,maxnreg] (as TILES), e.g. 16,2,1,168"
    )
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("scan_under_test", args.file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    k = tile_key(dtype)
    fwd_tile, bwd_tile = mod.TILES[k]
    if args.fwd_tile:  # (P, NL, num_warps[, maxnreg]), as in TILES
        fwd_tile = tuple(int(v) for v in args.fwd_tile.split(","))
    if args.bwd_tile:
        bwd_tile = tuple(int(v) for v in args.bwd_tile.split(","))
    mod.TILES[k] = (fwd_tile, bwd_tile)
    ftile, btile = mod._tiles([torch.empty(0, dtype=dtype)], 16)
    common = {"HAS_D": True, "HAS_Z": True, "HAS_BIAS": True, "SOFTPLUS": True, "FAST": True}
    common |= {"SEGMENTED": args.segmented, "SUMMARY": False}
    fwd = common | {"HAS_H0": False, "SAVE_STATES": True} | ftile.launch()
    bwd = common | {"HAS_DLAST": False} | btile.launch()
    print(
        f"triton {triton.__version__}, {args.file}, {args.dtype}, TILES[{k}] = {mod.TILES[k]}, segmented={args.segmented}"
    )

    def build(kern, const: dict) -> str:
        return compile_one(kern, const, args.ptxas, args.keep, args.dtype)

    print("  forward :", build(mod._scan_fwd_kernel, fwd))
    print("  backward:", build(mod._scan_bwd_kernel, bwd))
    if args.segmented:
        if hasattr(mod, "_scan_fwd_fix_kernel"):  # since session 7: pass 2 adds the entering state
            print("  forward fix     :", build(mod._scan_fwd_fix_kernel, fwd))
        else:  # older files: pass 1 is a summary-only variant of the forward kernel
            fwd_summary = fwd | {"SUMMARY": True, "SAVE_STATES": False}
            print("  forward summary :", build(mod._scan_fwd_kernel, fwd_summary))
        print("  backward summary:", build(mod._scan_bwd_kernel, bwd | {"SUMMARY": True}))


if __name__ == "__main__":
    main()
