"""Invertibility: encode images with one model's PF-ODE, decode with another's (PAPER.md §2).

    python experiments/invertibility.py [--config small|paper] [--out DIR] [--models DIR]

For each regime N, images (num_images/2 training images, and as many held-out ones when N < the data set size) are
encoded at σ_min = 0.002 → σ_max = 80 by jaxrepro.inverse.encode (Heun, ode_steps on the EDM grid)
with each model and, for training images, with the optimal denoiser. Reports the round-trip RMS error
(encode and decode with the same model), the cross-model decode error (encode with one, decode with the
other) and its RP against the original, and the agreement of the two models' encodings of the same image
(cosine, relative L2) against the chance level of unrelated pairs; writes results.json and
invertibility_n{N}.png (image | A→A | A→B | B→B | B→A).
"""
import os

import numpy as np

import repro_tools as rt
from common import Progress
from configs.experiments import invertibility as invert_config
from jaxrepro import plots
from jaxrepro.inverse import decode, encode, encoding_agreement, rms
from jaxrepro.kernels import edm_sigmas
from inverse_problems import measured_images


def summary(values):
    """Mean and median of a per-image array."""
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "median": float(np.median(v))}


def run(cfg, log=print):
    out = {"config": cfg.to_dict(), "regimes": []}
    a, b = list(cfg.models)
    sigmas = edm_sigmas(cfg.ode_steps)[:-1]                         # [0.002 … 80] descending, no 0
    prog = Progress(len(cfg.ns), log)
    for n in cfg.ns:
        jobs = {tag: rt.model_job(cfg, n, tag, over, log=lambda *a: None) for tag, over in cfg.models.items()}
        fns = {tag: rt.net_fn(job) for tag, job in jobs.items()}
        ref = jobs[a]
        half = cfg.num_images // 2
        sets = {"train": ref.images[:min(half, len(ref.images))]}
        held, source = measured_images(ref, half)
        if source != "training images":                            # held out of the subset, or a test split
            sets["held_out"] = held
        rec = {"n": int(n), "sets": {}}
        rows, titles = [], []
        for name, imgs in sets.items():
            z = {t: np.asarray(encode(f, imgs, sigmas)) for t, f in fns.items()}
            dec = {(e, d): np.asarray(decode(fns[d], z[e], sigmas)) for e in fns for d in fns}
            seeds = np.arange(len(imgs))
            sc = rt.scorer_for(cfg, ref)
            same, chance = encoding_agreement(z[a], z[b])
            r = {"num_images": len(imgs),
                 "round_trip_rmse": {t: summary(rms(dec[(t, t)], imgs)) for t in fns},
                 "cross_decode_rmse": {f"{e}->{d}": summary(rms(dec[(e, d)], imgs)) for e, d in [(a, b), (b, a)]},
                 "cross_decode_rp": {f"{e}->{d}": sc.pair(np.clip(dec[(e, d)], -1, 1), imgs, seeds)["rp"]
                                     for e, d in [(a, b), (b, a)]},
                 "encoding_cosine": summary(same["cosine"]), "encoding_rel_l2": summary(same["rel_l2"]),
                 "chance_cosine": summary(chance["cosine"]), "chance_rel_l2": summary(chance["rel_l2"]),
                 "latent_norm_over_sqrt_d": {t: summary(np.linalg.norm(v.reshape(len(v), -1), axis=1)
                                                        / np.sqrt(v[0].size)) for t, v in z.items()}}
            if name == "train":                                     # the oracle's encoding of its own training images
                zo = np.asarray(encode(rt.oracle_fn(ref), imgs, sigmas))
                r["oracle_encoding_cosine"] = {t: summary(encoding_agreement(z[t], zo)[0]["cosine"]) for t in fns}
                r["latent_norm_over_sqrt_d"]["oracle"] = summary(np.linalg.norm(zo.reshape(len(zo), -1), axis=1)
                                                                 / np.sqrt(zo[0].size))
            rec["sets"][name] = r
            trip = r["round_trip_rmse"]
            log(f"N={n} {name}: round trip {trip[a]['mean']:.4f}/{trip[b]['mean']:.4f}, "
                f"cross {r['cross_decode_rmse'][f'{a}->{b}']['mean']:.3f}, encoding cosine "
                f"{r['encoding_cosine']['mean']:.3f} (chance {r['chance_cosine']['mean']:.3f})")
            rows += [imgs[:12], dec[(a, a)][:12], dec[(a, b)][:12], dec[(b, b)][:12], dec[(b, a)][:12]]
            titles += [f"{name}", f"{a}→{a}", f"{a}→{b}", f"{b}→{b}", f"{b}→{a}"]
        plots.image_rows([np.clip(r, -1, 1) for r in rows], os.path.join(cfg.out_dir, f"invertibility_n{n}.png"),
                         titles, max_cols=12)
        out["regimes"].append(rec)
        prog.step(f"N={n}")
    return out


def main():
    rt.experiment_main(__doc__, "invertibility", invert_config, run, figures="invertibility_n*.png")


if __name__ == "__main__":
    main()
