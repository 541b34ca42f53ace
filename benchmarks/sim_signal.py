"""How much species signal the simulated apes hold at each length, seen by the k-mer baseline (CPU only).

A check of the classification benchmark's data rather than of a model: simulate the five genomes, draw
many random windows per species from the first 80 % of each genome (training) and from the last 15 %
(test; disjoint, 5 % gap), and fit ``KmerLogisticClassifier`` at k = 6 and 8. On real ape genomes short
segments are nearly indistinguishable and accuracy climbs only at long lengths; the simulator should
look the same to a model that counts k-mers.

    python benchmarks/sim_signal.py --genome-mb 32 --out /tmp/sim_signal
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from mamba_dna.datasets.fasta import open_fasta

from mamba_dna.baselines import KmerLogisticClassifier
from mamba_dna.simulate import simulate_apes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--genome-mb", type=float, default=32.0, help="ancestral genome length in Mb")
    ap.add_argument("--lengths", default="12,14,16,18", help="log2 window lengths")
    ap.add_argument("--ks", default="6,8", help="k-mer sizes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/sim_signal", help="where the genomes are simulated")
    args = ap.parse_args()

    sim = simulate_apes(int(args.genome_mb * 1e6), Path(args.out), seed=args.seed, chromosomes=1)
    genomes = {}
    for species, path in sim.fasta.items():
        fa = open_fasta(path)
        name = next(iter(fa.lengths()))
        genomes[species] = np.asarray(fa.tokens(name, 0, fa.length(name)), dtype=np.uint8)
    rng = np.random.default_rng(args.seed)
    print(
        "| L | train / test windows per species | " + " | ".join(f"k={k}" for k in args.ks.split(",")) + " |"
    )
    for e in map(int, args.lengths.split(",")):
        L = 2**e
        n_train, n_test = (400, 100) if e <= 16 else (200, 60)
        x_train, y_train, x_test, y_test = [], [], [], []
        for species, seq in genomes.items():
            cut, test_start = int(len(seq) * 0.8), int(len(seq) * 0.85)
            for a in rng.integers(0, cut - L, n_train):
                x_train.append(seq[a : a + L])
                y_train.append(species)
            for a in rng.integers(test_start, len(seq) - L, n_test):
                x_test.append(seq[a : a + L])
                y_test.append(species)
        cells = []
        for k in map(int, args.ks.split(",")):
            t = time.perf_counter()
            clf = KmerLogisticClassifier(k=k, seed=args.seed).fit(x_train, y_train)
            acc = float(np.mean(clf.predict(x_test) == np.array(y_test)))
            cells.append(f"{acc:.1%} ({time.perf_counter() - t:.0f} s)")
        print(f"| 2^{e} | {n_train} / {n_test} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
