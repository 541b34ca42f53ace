"""``mamba-dna embed``: per-window or per-base embeddings of FASTA sequences into HDF5 (thin over the library).

Also prints embeddings files for ``mamba-dna info`` (:func:`print_embeddings_info`).
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

import typer
from mamba_dna.cli.common import print_json, report_user_errors

# torch and h5py are imported inside the functions: `mamba-dna --help` must start without them.


@report_user_errors
def embed(
    run_dir: Path = typer.Argument(..., help="Run or checkpoint directory (ours or mamba_ssm's)."),
    fasta: list[Path] = typer.Argument(..., help="FASTA files (plain, gzip or bgzip)."),
    out: Path = typer.Option(..., "--out", "-o", help="HDF5 file to write (.h5)."),
    window: int | None = typer.Option(
        None,
        "--window",
        help="Window length (pooled) or piece length (--pool none). Default: the model's trained length "
        "from the run directory, else 65536; shorter records are embedded whole.",
    ),
    stride: int | None = typer.Option(
        None, "--stride", help="Distance between pooled window starts (default: the window)."
    ),
    region: list[str] | None = typer.Option(
        None, "--region", help="Only this region, samtools style chr:start-end (1-based); repeatable."
    ),
    bed: Path | None = typer.Option(None, "--bed", help="Only the regions of this BED file."),
    pool: str = typer.Option(
        "mean", "--pool", help="mean | last: one vector per window; none: one per base (exact, streamed)."
    ),
    rc_average: bool = typer.Option(
        False, "--rc-average", help="Average with the reverse-complement strand (realigned per base)."
    ),
    dtype: str = typer.Option("float16", "--dtype", help="Stored precision: float16 | float32."),
    batch_size: int = typer.Option(
        8, "--batch-size", help="Windows (or records, per base) per forward pass."
    ),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
    precision: str = typer.Option("fp32", "--precision", help="Compute precision: fp32 | bf16 (GPU)."),
    compression: str = typer.Option("lzf", "--compression", help="HDF5 compression: lzf | gzip | none."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out (only once finished)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted run (its work directory <out>.partial)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Embed FASTA sequences with a trained model into an HDF5 file, streamed in bounded memory.

    Pooled output (--pool mean|last) holds one vector per window: /embeddings, /record, /start, /end (0-based, half-open). Per-base output (--pool none) holds /per_base/<record> (length x d_model), computed with the whole record as left context by carrying the model state between pieces. Work in progress lives in the directory <out>.partial; the HDF5 file is assembled there and renamed onto --out when complete, and --resume continues an interrupted run from its last batch.

    Example: mamba-dna embed runs/apes genomes.fa --out emb.h5 --window 4096 --pool mean --rc-average
    """
    from mamba_dna.embedding import describe_embeddings
    from mamba_dna.embedding import embed as run_embed

    t0 = time.perf_counter()
    regions: list[Any] = list(region or [])
    if bed is not None:
        regions.append(bed)
    path = run_embed(
        run_dir,
        fasta,
        out,
        window=window,
        stride=stride,
        regions=regions or None,
        pool=pool,
        rc_average=rc_average,
        dtype=dtype,
        batch_size=batch_size,
        device=device,
        precision=precision,
        compression=compression,
        resume=resume,
        force=force,
        quiet=quiet or json_out,
        command=_command_line(locals()),
    )
    seconds = time.perf_counter() - t0
    info = describe_embeddings(path)
    summary = _summary(info, seconds)
    if json_out:
        print_json(summary)
    elif not quiet:
        from mamba_dna.progress import stderr

        what = (
            f"{summary['tracks']} per-base tracks, {summary['bases']:,} bases"
            if summary["pool"] == "none"
            else f"{summary['windows']:,} windows"
        )
        stderr.print(f"wrote {path}: {what} x {summary['d_model']} ({summary['seconds']:.1f} s)")


def _command_line(params: dict[str, Any]) -> str:
    """The command as typed, rebuilt from the parsed options (sys.argv is not ours under a test runner)."""
    words = [
        "mamba-dna",
        "embed",
        str(params["run_dir"]),
        *map(str, params["fasta"]),
        "--out",
        str(params["out"]),
    ]
    flags = {"rc_average": "--rc-average", "force": "--force", "resume": "--resume", "quiet": "--quiet"}
    for name, flag in flags.items():
        if params[name]:
            words.append(flag)
    if params["json_out"]:
        words.append("--json")
    for r in params["region"] or []:
        words += ["--region", r]
    defaults = {"window": None, "stride": None, "bed": None, "pool": "mean", "dtype": "float16"}
    defaults |= {"batch_size": 8, "device": "auto", "precision": "fp32", "compression": "lzf"}
    for name, default in defaults.items():
        if params[name] != default:
            words += ["--" + name.replace("_", "-"), str(params[name])]
    return shlex.join(words)


def _summary(info: dict[str, Any], seconds: float) -> dict[str, Any]:
    a = info["attributes"]
    out: dict[str, Any] = {
        "out": info["path"],
        "pool": a["pool"],
        "d_model": a["model_config"]["d_model"],
        "window": a["window"],
        "stride": a["stride"],
        "dtype": a["dtype"],
        "rc_average": a["rc_average"],
        "checkpoint_sha256": a["checkpoint_sha256"],
        "seconds": round(seconds, 3),
        "size_bytes": info["size_bytes"],
    }
    if a["pool"] == "none":
        out["tracks"] = info["per_base"]["tracks"]
        out["bases"] = info["per_base"]["bases"]
    else:
        out["windows"] = next(d["shape"][0] for d in info["datasets"] if d["name"] == "/embeddings")
    return out


def describe_embeddings(path: Path) -> dict[str, Any]:
    """JSON-ready description of an embeddings file (attributes, dataset shapes) for ``mamba-dna info``."""
    from mamba_dna.embedding import describe_embeddings as describe

    return describe(path)


def render_embeddings_info(info: dict[str, Any], console: Any, show_all: bool = False) -> None:
    """Print :func:`describe_embeddings`' result with rich: attributes, then every dataset's shape."""
    from rich.table import Table

    a = info["attributes"]
    state = "complete" if info["complete"] else "[yellow]incomplete (an interrupted run: use --resume)[/]"
    console.print(f"[bold]{info['path']}[/]  mamba-dna embeddings, {state}, {info['size_bytes']:,} bytes")
    attrs = Table(show_header=False, box=None, pad_edge=False)
    attrs.add_column(style="cyan")
    attrs.add_column(overflow="fold")
    cfg = a.get("model_config", {})
    shown = {
        "model": f"d_model {cfg.get('d_model')}, n_layer {cfg.get('n_layer')}, d_state {cfg.get('d_state')}",
        "checkpoint": a.get("checkpoint"),
        "checkpoint_sha256": a.get("checkpoint_sha256"),
        "pool": a.get("pool"),
        "window": f"{a.get('window')} ({a.get('window_source')})",
        "stride": a.get("stride"),
        "rc_average": a.get("rc_average"),
        "dtype": a.get("dtype"),
        "precision": a.get("precision"),
        "compression": a.get("compression"),
        "tokenizer": " ".join(a.get("tokenizer", [])),
        "input_fasta": ", ".join(a.get("input_fasta", [])),
        "regions": ", ".join(a.get("regions", [])) or "-",
        "created": a.get("created"),
        "completed": a.get("completed", "-"),
        "mamba_dna_version": a.get("mamba_dna_version"),
        "command": a.get("command"),
    }
    for k, v in shown.items():
        attrs.add_row(k, str(v))
    console.print(attrs)
    table = Table(title="datasets", title_justify="left")
    for col in ("name", "shape", "dtype", "chunks", "compression"):
        table.add_column(col)

    def row(d: dict[str, Any]) -> None:
        chunks = " x ".join(map(str, d["chunks"])) if d["chunks"] else "-"
        table.add_row(d["name"], " x ".join(map(str, d["shape"])), d["dtype"], chunks, str(d["compression"]))

    for d in info["datasets"]:
        row(d)
    per_base = info.get("per_base")
    if per_base:
        items = per_base["items"] if show_all else per_base["items"][:_SHOWN_TRACKS]
        for d in items:
            row(d)
        if len(items) < per_base["tracks"]:
            table.add_row(f"... {per_base['tracks'] - len(items):,} more (--all shows them)", "", "", "", "")
    console.print(table)
    if per_base:
        console.print(f"per-base tracks: {per_base['tracks']:,}, {per_base['bases']:,} bases")


_SHOWN_TRACKS = 25
# What cli/info.py registers for .h5/.hdf5 files: (description, renderer); torch is never imported.
DESCRIBER = (describe_embeddings, render_embeddings_info)
