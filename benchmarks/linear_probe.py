"""Linear probe: how well do a language model's pooled embeddings separate the classes of a fine-tuning split?

A logistic regression (scikit-learn, standardised features) on the mean-pooled and the last-position
final hidden states of a pretrained model (not fine-tuned), fitted on training segments of a classifier
run's split and scored on its validation and test segments. It tells apart "the features hold the signal
but fine-tuning did not find it" from "the held-out region holds no signal the features see".

    python benchmarks/linear_probe.py quickstart-runs/pretrain quickstart-runs/classifier
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from mamba_dna.checkpoint import load_model
from mamba_dna.classify_data import Segments, open_classes
from mamba_dna.manifest import read_manifest
from mamba_dna.splits import Split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lm", help="pretrained run directory (the model whose embeddings are probed)")
    ap.add_argument("classifier", help="a finetune run directory: its manifest, split and segment length")
    ap.add_argument("--train", type=int, default=480, help="training segments (balanced over classes)")
    ap.add_argument("--per-class", type=int, default=32, help="validation and test segments per class")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    info = json.loads((Path(args.classifier) / "classifier.json").read_text())
    length = int(info["segment_length"])
    source = info["manifest"]["source"]
    manifest = read_manifest(None if source.startswith("builtin:") else source)
    segments = Segments(
        open_classes(manifest, length), Split.load(Path(args.classifier) / "split.json"), seed=args.seed
    )
    model = load_model(args.lm).eval()

    def features(xs: list[np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            h = model.hidden_states(torch.from_numpy(np.stack(xs).astype(np.int64)))
        return {"mean": h.mean(1).numpy(), "last": h[:, -1].numpy()}

    xtr, ytr = segments.train_windows(args.train, 1, length, args.train)
    sets = {"train": (features(xtr), ytr)}
    for split in ("valid", "test"):
        xs, ys = segments.fixed(split, length, args.per_class)
        sets[split] = (features(xs), ys)
    print(f"{len(info['labels'])} classes, L = {length:,}, chance {1 / len(info['labels']):.0%}")
    print("| pooling | C | train | valid | test |")
    print("|---|---|---|---|---|")
    for pooling in ("mean", "last"):
        scaler = StandardScaler().fit(sets["train"][0][pooling])
        for c in (0.01, 0.1, 1.0):
            clf = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(sets["train"][0][pooling]), ytr)
            acc = {s: clf.score(scaler.transform(f[pooling]), y) for s, (f, y) in sets.items()}
            print(f"| {pooling} | {c} | {acc['train']:.1%} | {acc['valid']:.1%} | {acc['test']:.1%} |")


if __name__ == "__main__":
    main()
