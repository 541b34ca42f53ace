"""Per-base output (``pool="none"``): one vector per base, with the whole record before it as context.

The model is causal, so a job (a record, or a region as a sequence of its own) is streamed through it in
consecutive pieces of ``window`` bases with its recurrent state carried from piece to piece: the vector
of base ``i`` is exactly the one the model gives with the whole job before ``i`` as context, for any
length, in memory bounded by the piece. ``window`` therefore only sets the piece size (memory versus
speed); ``stride`` does not apply and no position is computed twice.

``batch_size`` jobs stream side by side, one per *lane* of the batch, each with its own state; a lane
whose job ends takes the next job. With ``rc_average`` a job first streams its reverse complement (stage
0) into a float32 row file, realigned to forward coordinates (base ``i`` pairs with base ``n - 1 - i`` of
the reverse complement), then its forward strand (stage 1), averaged with it row by row: each base sees
its whole left context through one strand and its whole right context through the other. The two
strands are computed in opposite directions, hence the row file.

While running, each track is a row file of the journal (:mod:`.journal`); the progress is every lane,
the next job and the model's recurrent state after the last written batch. The tracks become datasets
when the run is complete.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import h5py
import numpy as np
import torch

from mamba_dna.embedding.inputs import Job
from mamba_dna.embedding.journal import Journal, Progress, RowFiles
from mamba_dna.embedding.runner import Pipeline, Runner
from mamba_dna.embedding.store import chunk_rows, compression_args, escape_name, unescape_name
from mamba_dna.errors import UserError
from mamba_dna.mixer import LayerState


def check_jobs(jobs: list[Job], window: int | None) -> None:
    """Refuse a ``--window`` longer than a job (it would be no piece at all) and tracks of the same name."""
    if window is not None:
        short = next((j for j in jobs if j.length < window), None)
        if short is not None:
            what = "region" if short.is_region else "record"
            raise UserError(
                f"--window {window} is longer than {what} {short.key!r} ({short.length} bases); with "
                "--pool none give a window no longer than every record, or omit --window"
            )
    keys = [escape_name(j.key) for j in jobs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise UserError(f"region {unescape_name(dup)!r} is given twice; per-base tracks must be unique")


@dataclass
class Lane:
    """One stream of the batch: a job, its pass (0: reverse complement, 1: forward) and offset."""

    job: int
    stage: int
    offset: int


def _lanes(prog: Progress) -> list[Lane]:
    return [Lane(int(j), int(stage), int(off)) for j, stage, off in prog["lanes"]]


def total_bases(run: Runner) -> int:
    return run.passes * total_rows(run)


def bases_done(run: Runner, prog: Progress | None) -> int:
    """Bases (of both strands) a resumed run already covers."""
    if prog is None:
        return 0
    in_flight = {lane.job: lane for lane in _lanes(prog)}
    done = 0
    for j in range(int(prog["next_job"])):
        length, lane = run.jobs[j].length, in_flight.get(j)
        if lane is None:
            done += length * run.passes
        else:  # its reverse pass is done once it is in stage 1
            done += lane.offset + (length if lane.stage == 1 and run.rc_average else 0)
    return done


def total_rows(run: Runner) -> int:
    return sum(j.length for j in run.jobs)


def _tracks(run: Runner, journal: Journal) -> RowFiles:
    return journal.rows("track", run.dtype, run.d_model)


def assemble(run: Runner, journal: Journal, f: h5py.File) -> None:
    """One dataset per job from its row file, a chunk's worth of rows at a time."""
    group, tracks, d = f.create_group("per_base"), _tracks(run, journal), run.d_model
    for j, job in enumerate(run.jobs):
        rows = chunk_rows(d, run.dtype.itemsize, job.length)
        ds = group.create_dataset(
            escape_name(job.key),
            shape=(job.length, d),
            maxshape=(None, d),
            dtype=run.dtype,
            chunks=(rows, d),
            **compression_args(run.compression),
        )
        ds.attrs.update({"record": job.record, "start": job.start, "end": job.end})
        for lo in range(0, job.length, rows):
            n = min(rows, job.length - lo)
            ds[lo : lo + n] = tracks.read(j, lo, n)
            run.advance_rows(n)


def _start(run: Runner, prog: Progress | None, first_stage: int) -> tuple[list[Lane], int, list[LayerState]]:
    """The lanes, the next job and the model state: fresh, or as of the last flushed batch."""
    if prog is None:
        lanes = [Lane(j, first_stage, 0) for j in range(min(run.batch_size, len(run.jobs)))]
        return lanes, len(lanes), run.model.allocate_state(len(lanes))
    lanes = _lanes(prog)
    state = run.model.allocate_state(len(lanes)) if lanes else []
    for i, st in enumerate(state):
        st.conv.copy_(torch.from_numpy(prog[f"conv_{i}"]))
        st.ssm.copy_(torch.from_numpy(prog[f"ssm_{i}"]))
    return lanes, int(prog["next_job"]), state


def embed(run: Runner, journal: Journal) -> None:
    jobs, first_stage = run.jobs, 0 if run.rc_average else 1
    lanes, next_job, state = _start(run, journal.load_progress(), first_stage)
    tracks, reverse = _tracks(run, journal), journal.rows("reverse", np.float32, run.d_model)

    def write(
        pieces: list[tuple[int, int, int, int]],
        lanes_after: np.ndarray,
        next_after: int,
        finished: list[int],
        h: np.ndarray,
        *states: np.ndarray,
    ) -> None:
        for i, (j, stage, off, n) in enumerate(pieces):
            rows = h[i, :n]
            if stage == 0:
                # Reverse-strand base k of this piece is forward base length - 1 - (off + k).
                reverse.write(j, jobs[j].length - off - n, rows[::-1])
                continue
            if run.rc_average:
                rows = (rows.astype(np.float32) + reverse.read(j, off, n)) / 2
            tracks.write(j, off, rows)
        layers: dict[str, np.ndarray] = {}
        for i in range(len(states) // 2):
            layers[f"conv_{i}"], layers[f"ssm_{i}"] = states[2 * i], states[2 * i + 1]
        journal.save_progress(lanes=lanes_after, next_job=np.int64(next_after), **layers)
        for j in finished:  # only now that the progress says they are complete
            reverse.remove(j)

    pipe = Pipeline(run.device)
    # rc_average averages in float32 on the host, with the float32 reverse strand.
    out_dtype = torch.float16 if run.dtype.itemsize == 2 and not run.rc_average else torch.float32
    while lanes:
        pieces, arrays = [], []
        for lane in lanes:
            job = jobs[lane.job]
            n = min(run.window, job.length - lane.offset)
            if lane.stage == 0:  # reverse strand: piece k is the k-th block of window bases from the end
                end = job.length - lane.offset
                arrays.append(run.tokens(job, end - n, end, reverse=True))
            else:
                arrays.append(run.tokens(job, lane.offset, lane.offset + n))
            pieces.append((lane.job, lane.stage, lane.offset, n))
        h = run.hidden(run.batch_ids(arrays), state)

        finished, keep = [], []
        for i, (lane, piece) in enumerate(zip(lanes, pieces, strict=True)):
            lane.offset += piece[3]
            if lane.offset == jobs[lane.job].length:
                if lane.stage == 0:
                    lane.stage, lane.offset = 1, 0
                else:
                    finished.append(lane.job)
                    if next_job == len(jobs):
                        continue  # no job left for this lane: it is dropped below
                    lanes[i] = Lane(next_job, first_stage, 0)
                    next_job += 1
                for st in state:  # a new pass starts from the zero state
                    st.conv[i].zero_()
                    st.ssm[i].zero_()
            keep.append(i)
        if len(keep) < len(lanes):  # the last jobs: shrink the batch instead of computing padding
            index = torch.tensor(keep, dtype=torch.long, device=run.device)
            state = [LayerState(s.conv.index_select(0, index), s.ssm.index_select(0, index)) for s in state]
            lanes = [lanes[i] for i in keep]

        lanes_after = np.array([[x.job, x.stage, x.offset] for x in lanes], dtype=np.int64).reshape(-1, 3)
        snapshot = [t.clone() for st in state for t in (st.conv, st.ssm)]
        pipe.submit(
            functools.partial(write, pieces, lanes_after, next_job, finished),
            [h.to(out_dtype), *snapshot],
        )
        run.advance(sum(p[3] for p in pieces))
    pipe.drain()
