"""How well each descriptor detects "same image" in the memorization regime, against ground truth.

    python experiments/descriptor_calibration.py runs/quickstart_n32 [--sscd DIR] [--out docs/descriptor_calibration]

Ground truth for a seed: the network sample and the oracle sample have the same L2-nearest training
image (compare.py's same-image rate). For each descriptor: ROC AUC of its pair similarity for that
ground truth, the threshold calibrated on different-seed pairs at --fpr false positives (5 %), and the
agreement of "similarity > threshold" with the ground truth; for SSCD also its fixed 0.6 threshold.
"""
import argparse
import json
import os

import numpy as np

from jaxrepro import metrics, plots
from jaxrepro.data import load_dataset, subset
from jaxrepro.descriptors import get_descriptor


def auc(scores, truth):
    """P(score of a positive > score of a negative), ties counted half."""
    pos, neg = scores[truth], scores[~truth]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float(((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("workdir")
    parser.add_argument("--sscd", default=None, help="directory of a converted SSCD checkpoint")
    parser.add_argument("--out", default=None)
    parser.add_argument("--fpr", type=float, default=0.05,
                        help="false-positive rate on different-seed pairs (keep it above 1/N at small N)")
    args = parser.parse_args()
    cfg = json.load(open(os.path.join(args.workdir, "config.json")))
    train, _ = subset(*load_dataset(cfg["data"]["name"]), cfg["data"]["n"], cfg["data"]["subset_seed"])
    with np.load(os.path.join(args.workdir, "compare_samples.npz")) as f:
        x_net, x_orc, seeds = f["network"], f["oracle"], f["seeds"]
    _, nn_net = metrics.top_k_similar(x_net, train, 1)
    _, nn_orc = metrics.top_k_similar(x_orc, train, 1)
    truth = np.asarray(nn_net[:, 0] == nn_orc[:, 0])
    names = ["pixel_cosine", "pixel_l2"] + (["sscd"] if args.sscd else [])
    report, hists = {"num_seeds": int(len(seeds)), "ground_truth_same_rate": float(truth.mean())}, {}
    for name in names:
        desc = get_descriptor(name, checkpoint=args.sscd) if name == "sscd" else get_descriptor(name)
        fa, fb = desc.embed(x_net), desc.embed(x_orc)
        pair = np.asarray(metrics.pair_scores(fa, fb, seeds, seeds, desc))
        unrelated = np.asarray(metrics.unrelated_pairs(fa, desc, other=fb))
        cal = metrics.calibrate_threshold(unrelated, fpr=args.fpr)
        rec = {"auc": auc(pair, truth), "fpr": args.fpr, "threshold": cal["threshold"],
               "agreement_at_calibrated": float(np.mean((pair > cal["threshold"]) == truth)),
               "rp_at_calibrated": float(np.mean(pair > cal["threshold"]))}
        if name == "sscd":
            rec.update(rp_at_0_6=float(np.mean(pair > 0.6)), agreement_at_0_6=float(np.mean((pair > 0.6) == truth)),
                       unrelated_above_0_6=float(np.mean(unrelated > 0.6)))
        report[name] = rec
        hists[name] = (pair, unrelated, cal["threshold"])
        print(name, json.dumps(rec))
    out = args.out or os.path.join(args.workdir, "descriptor_calibration")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "descriptor_calibration.json"), "w") as f:
        json.dump(report, f, indent=1)
    for name, (pair, unrelated, thr) in hists.items():
        plots.histogram({"same seed, same image": pair[truth], "same seed, different image": pair[~truth],
                         "different seeds": unrelated}, os.path.join(out, f"calibration_{name}.png"), thr,
                        f"{name} similarity", f"N = {len(train)}: network vs oracle samples")
    print(f"wrote {out}/descriptor_calibration.json and calibration_*.png")


if __name__ == "__main__":
    main()
