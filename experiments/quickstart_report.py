"""Summarise the quickstart's two runs (memorization at N = 32, generalization at N = 1797).

    python experiments/quickstart_report.py runs/quickstart_n32 runs/quickstart_n1797 [--out runs/quickstart.json]

Prints the measured figures against the quickstart's targets and writes them as JSON.
"""
import argparse
import json
import os

TARGETS = {"memorization": [("same_image_rate", ">=", 0.85), ("gl_network", "<=", 0.1)],
           "generalization": [("gl_network", ">=", 0.9)]}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("memorization_dir")
    parser.add_argument("generalization_dir")
    parser.add_argument("--out", default="runs/quickstart.json")
    args = parser.parse_args()
    report, ok = {}, True
    for regime, wd in [("memorization", args.memorization_dir), ("generalization", args.generalization_dir)]:
        with open(os.path.join(wd, "compare.json")) as f:
            rec = json.load(f)
        keys = ("num_train", "num_seeds", "descriptor", "same_image_rate", "unrelated_same_image_rate", "rp",
                "rp_threshold", "rp_fixed", "fixed_threshold", "gl_network", "gl_oracle", "gl_paper_network",
                "mean_abs_pixel_diff")
        report[regime] = {k: rec[k] for k in keys}
        print(f"{regime:>15} N={rec['num_train']:<5} seeds={rec['num_seeds']}  same-image rate "
              f"{rec['same_image_rate']:.3f}  RP {rec['rp_fixed']:.3f} ({rec['descriptor']} > {rec['fixed_threshold']})  "
              f"RP {rec['rp']:.3f} (5 % FPR)  GL(net) {rec['gl_network']:.3f}  "
              f"GL(oracle) {rec['gl_oracle']:.3f}")
        for key, op, target in TARGETS[regime]:
            met = rec[key] >= target if op == ">=" else rec[key] <= target
            ok &= met
            print(f"{'':>17}{key} {rec[key]:.3f} {op} {target}: {'met' if met else 'NOT met'}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"all quickstart targets met: {ok}  (figures: {args.memorization_dir}/compare_grid.png, "
          f"{args.memorization_dir}/denoiser_gap.png)")


if __name__ == "__main__":
    main()
