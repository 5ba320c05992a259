"""Which descriptor and threshold detect "same image" on digits, against ground truth, across regimes.

    python experiments/descriptor_calibration.py runs/quickstart_n32 runs/quickstart_n1797 [--sscd DIR] \
        [--out docs/descriptor_calibration]

Ground truth for a seed: the network sample and the oracle sample (both quantized to uint8, as compare
does) have the same L2-nearest training image. For each descriptor and each run: ROC AUC of its pair
similarity for that ground truth, RP at the threshold calibrated at --fpr on different-seed pairs
whose nearest images differ, and RP at the descriptor's fixed threshold; pooled over all runs, the
threshold that agrees best with the ground truth. A descriptor whose RP tracks the regime has RP close
to the ground-truth rate in every run.
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


def load_run(workdir):
    """(train images, quantized network / oracle samples, seeds, ground truth [seeds]) of a compare run."""
    cfg = json.load(open(os.path.join(workdir, "config.json")))
    train, _ = subset(*load_dataset(cfg["data"]["name"]), cfg["data"]["n"], cfg["data"]["subset_seed"])
    with np.load(os.path.join(workdir, "compare_samples.npz")) as f:
        x_net, x_orc, seeds = metrics.quantize(f["network"]), metrics.quantize(f["oracle"]), f["seeds"]
    _, nn_net = metrics.top_k_similar(x_net, train, 1)
    _, nn_orc = metrics.top_k_similar(x_orc, train, 1)
    nn_net, nn_orc = np.asarray(nn_net[:, 0]), np.asarray(nn_orc[:, 0])
    return train, x_net, x_orc, seeds, nn_net == nn_orc, nn_net != np.roll(nn_orc, -1)


def best_threshold(pair, truth):
    """(threshold, agreement) maximising the agreement of `pair > threshold` with the ground truth."""
    cands = np.unique(pair)
    agree = np.array([np.mean((pair > t) == truth) for t in cands])
    return float(cands[int(np.argmax(agree))]), float(agree.max())


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--sscd", default=None, help="directory of a converted SSCD checkpoint")
    parser.add_argument("--out", default=None)
    parser.add_argument("--fpr", type=float, default=0.05, help="false-positive rate on unrelated pairs")
    args = parser.parse_args()
    runs = {os.path.basename(os.path.normpath(w)): load_run(w) for w in args.workdirs}
    names = ["pixel_cosine", "pixel_l2"] + (["sscd"] if args.sscd else [])
    report = {"runs": {r: {"num_train": len(v[0]), "num_seeds": len(v[3]), "ground_truth_same_rate": float(v[4].mean())}
                       for r, v in runs.items()}}
    for name in names:
        desc = get_descriptor(name, checkpoint=args.sscd) if name == "sscd" else get_descriptor(name)
        per_run, pooled = {}, ([], [])
        for run, (train, x_net, x_orc, seeds, truth, differ) in runs.items():
            fa, fb = desc.embed(x_net), desc.embed(x_orc)
            pair = np.asarray(metrics.pair_scores(fa, fb, seeds, seeds, desc))
            unrelated = np.asarray(metrics.unrelated_pairs(fa, desc, other=fb))[differ]
            cal = metrics.calibrate_threshold(unrelated, fpr=args.fpr)
            per_run[run] = {"auc": auc(pair, truth), "calibrated_threshold": cal["threshold"],
                            "rp_at_calibrated": float(np.mean(pair > cal["threshold"])),
                            "rp_at_fixed": float(np.mean(pair > desc.threshold)),
                            "agreement_at_fixed": float(np.mean((pair > desc.threshold) == truth)),
                            "ground_truth_same_rate": float(truth.mean())}
            pooled[0].append(pair)
            pooled[1].append(truth)
            out = args.out or os.path.join(args.workdirs[0], "descriptor_calibration")
            plots.histogram({"same seed, same image": pair[truth], "same seed, different image": pair[~truth],
                             "different seeds and images": unrelated},
                            os.path.join(out, f"calibration_{name}_{run}.png"), desc.threshold,
                            f"{name} similarity", f"{run}: N = {len(train)}, network vs oracle samples")
        thr, agree = best_threshold(np.concatenate(pooled[0]), np.concatenate(pooled[1]))
        report[name] = {"fixed_threshold": desc.threshold, "best_pooled_threshold": thr,
                        "best_pooled_agreement": agree, "runs": per_run}
        print(name, json.dumps(report[name]))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "descriptor_calibration.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {out}/descriptor_calibration.json and calibration_*.png")


if __name__ == "__main__":
    main()
