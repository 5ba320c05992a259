"""RP between two runs' samples of the same seeds (e.g. an imported EDM UNet and an imported U-ViT).

    python experiments/pair_rp.py runs/edm_vp runs/uvit [--descriptor pixel_l2 | sscd --sscd DIR] [--out FILE]

Each workdir needs the samples.npz of `python -m jaxrepro.main --workdir=DIR --mode=sample`; samples are
paired by seed (mismatched seeds are refused), quantized to uint8 as the authors do, and RP is
P(M(x1, x2) > the descriptor's fixed threshold) (SSCD: the paper's 0.6).
"""
import argparse
import json
import os

import numpy as np

from jaxrepro import metrics
from jaxrepro.descriptors import get_descriptor


def load_samples(workdir):
    """(images, seeds) of a workdir's samples.npz."""
    path = os.path.join(workdir, "samples.npz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} missing: run python -m jaxrepro.main --workdir={workdir} --mode=sample")
    with np.load(path, allow_pickle=False) as f:
        return f["images"], f["seeds"]


def pair_rp(dir1, dir2, descriptor):
    """{rp, threshold, mean similarity, n} of two runs' samples paired by seed."""
    (x1, s1), (x2, s2) = load_samples(dir1), load_samples(dir2)
    f1, f2 = descriptor.embed(metrics.quantize(x1)), descriptor.embed(metrics.quantize(x2))
    sim = np.asarray(metrics.pair_scores(f1, f2, s1, s2, descriptor))
    return {"rp": float(np.mean(sim > descriptor.threshold)), "threshold": descriptor.threshold,
            "descriptor": descriptor.name, "mean_similarity": float(sim.mean()), "num_seeds": int(len(s1))}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir1")
    parser.add_argument("workdir2")
    parser.add_argument("--descriptor", default="pixel_l2", choices=["pixel_l2", "pixel_cosine", "sscd"])
    parser.add_argument("--sscd", default=None, help="converted SSCD checkpoint directory (for --descriptor sscd)")
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args()
    kw = {"checkpoint": args.sscd} if args.descriptor == "sscd" else {}
    result = pair_rp(args.workdir1, args.workdir2, get_descriptor(args.descriptor, **kw))
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
