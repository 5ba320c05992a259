"""compare.py: conditional runs over many seeds, fair RP calibration, quantized samples, sampler settings."""
import json
import os
import sys

import jax
import numpy as np
import pytest

from jaxrepro import compare as compare_lib
from jaxrepro import metrics
from jaxrepro.data import load_dataset, subset
from jaxrepro.kernels import edm_sigmas
from jaxrepro.oracle import make_optimal_denoiser
from jaxrepro.precond import Precond

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits(n, seed=0):
    return subset(*load_dataset("digits"), n, seed)


def test_quantize_is_the_authors_uint8_conversion():
    x = np.array([-1.5, -1.0, -0.999, 0.0, 0.5, 0.999, 1.0, 2.0], np.float32)
    # EDM's generate.py: (x · 127.5 + 128).clip(0, 255).to(uint8), i.e. truncation of the clipped value
    expect = np.array([0, 0, 0, 128, 191, 255, 255, 255])
    np.testing.assert_array_equal(np.round((metrics.quantize(x) + 1) * 127.5), expect)


def test_identical_models_score_rp_one_at_small_n(tmp_path):
    """Network = oracle (true agreement 1.0), N = 64: different-seed pairs that land on one training image
    must not enter the calibration, else the threshold sits among identical images (RP was 0.46)."""
    images, _ = digits(64)
    orc = make_optimal_denoiser(images)
    seeds = np.arange(256)
    res = compare_lib.compare(orc, orc, images, str(tmp_path), seeds, edm_sigmas(12), "euler", fpr=0.05,
                              gap_images=8, log=lambda *_: None)
    assert res["same_image_rate"] == 1.0 and res["unrelated_same_image_rate"] > 0
    assert res["rp"] == 1.0
    assert res["rp_threshold_calibration"]["n_pairs"] == round(256 * (1 - res["unrelated_same_image_rate"]))
    assert res["rp_fixed"] == 1.0 and res["gl_paper_network"] == 0.0 and res["gl_oracle"] == 0.0
    with np.load(tmp_path / "compare_samples.npz") as f:   # the float samples are kept, not the uint8 ones
        x = f["network"]
    assert not np.allclose(x, metrics.quantize(x))


def test_denoiser_gap_feeds_each_training_image_its_own_label():
    images, labels = digits(40)
    cond = make_optimal_denoiser(images, labels)

    def own_label(oracle, true_labels, x, sigma, lab):    # equals the oracle only under each image's own label
        return oracle(x, sigma, true_labels)
    net = jax.tree_util.Partial(own_label, cond, jax.numpy.asarray(labels))
    gaps = compare_lib.denoiser_gap(net, cond, images, [2.0, 0.5, 0.0], num_images=40, train_labels=labels)
    assert max(gaps.values()) < 1e-10
    wrong = compare_lib.denoiser_gap(net, cond, images, [0.5], num_images=40, train_labels=np.arange(40) % 10)
    assert max(wrong.values()) > 1e-3


def test_conditional_compare_end_to_end_with_more_seeds_than_a_batch(tmp_path):
    """A conditional MLP through Job with 300 seeds (> the 256-seed sampling batch): each seed's class is
    bound to its own batch slice, so every oracle sample is a training image of class seed mod 10."""
    sys.path.insert(0, ROOT)
    from configs import quickstart
    from jaxrepro.run import Job
    c = quickstart.get_config()
    c.data.n = 100
    c.model = dict(name="mlp_tiny", num_classes=10)
    c.train.update(num_steps=40, log_every=20, ckpt_every=40, batch_size=32)
    c.sample.update(num_seeds=300, num_steps=10)
    c.compare.gap_images = 50
    job = Job(c, str(tmp_path), writes=True, log=lambda *_: None)
    job.train()
    res = job.compare()
    assert res["num_seeds"] == 300 and len(res["denoiser_gap"]) == 10
    with np.load(tmp_path / "compare_samples.npz") as f:
        orc, seeds = f["oracle"], f["seeds"]
    _, nn = metrics.top_k_similar(metrics.quantize(orc), job.images, 1)
    assert np.mean(job.labels[np.asarray(nn[:, 0])] == seeds % 10) > 0.99


def test_sampler_settings_clamp_to_the_network_and_round_like_it():
    from ml_collections import ConfigDict
    from jaxrepro.run import sampler_settings
    base = dict(solver="heun", num_steps=18, discretization="edm", schedule="linear", scaling="none",
                sigma_min=None, sigma_max=None, rho=7.0)
    grid, kw = sampler_settings(ConfigDict(base), Precond("ve"))         # VE nets know σ ∈ [0.02, 100]
    assert grid[-1] == 0 and grid[-2] == pytest.approx(0.02) and grid[0] == pytest.approx(80.0)
    assert kw["sigma_range"] == (0.02, 80.0)
    pc = Precond("iddpm")
    grid, _ = sampler_settings(ConfigDict(base), pc)                     # EDM grid rounded onto iDDPM's u
    assert set(np.round(grid[:-1], 10)) <= set(np.round(pc.u, 10)) and np.all(np.diff(grid) < 0)
    with pytest.raises(ValueError, match="rho must be > 0"):
        sampler_settings(ConfigDict(dict(base, rho=0.0)), Precond("edm"))


def test_conditional_run_without_images_of_a_sampled_class_is_refused(tmp_path):
    sys.path.insert(0, ROOT)
    from configs import quickstart
    from jaxrepro.run import Job
    c = quickstart.get_config()
    c.data.n = 5                                   # at most 5 of the 10 classes
    c.model = dict(name="mlp_tiny", num_classes=10)
    with pytest.raises(ValueError, match=r"has no image of class \["):
        Job(c, str(tmp_path / "w"), writes=True)
    assert not os.path.exists(tmp_path / "w")
