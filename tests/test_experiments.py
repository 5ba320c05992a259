"""The paper-figure experiments at a tiny size: the physics that must hold, checked against independent facts.

All experiments share one models folder (tiny MLPs, 2000 steps; 500 at N = 1797): memorization at N = 4, generalization at
N = 1797. Thresholds are physics, not earlier outputs: a memorizing model lands where the oracle lands;
the oracle only ever reproduces training images; a large data set cannot be copied by an under-fit MLP;
churn noise destroys the noise → image map; basins of the oracle at small σ are nearest-image cells.
"""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import churn  # noqa: E402
import conditional  # noqa: E402
import cross_model  # noqa: E402
import hyperplane  # noqa: E402
import regimes  # noqa: E402
import repro_tools as rt  # noqa: E402
import theory  # noqa: E402
from configs.experiments import churn as churn_cfg  # noqa: E402
from configs.experiments import conditional as conditional_cfg  # noqa: E402
from configs.experiments import cross_model as cross_model_cfg  # noqa: E402
from configs.experiments import hyperplane as hyperplane_cfg  # noqa: E402
from configs.experiments import regimes as regimes_cfg  # noqa: E402
from configs.experiments import theory as theory_cfg  # noqa: E402
from jaxrepro import data as data_lib  # noqa: E402
from jaxrepro.hyperplane import basin_map, nearest_index, plane_latents  # noqa: E402
from jaxrepro.kernels import sigma_grid  # noqa: E402
from jaxrepro.oracle import make_optimal_denoiser  # noqa: E402

# subset_seed 2: the N = 4 subset holds four different digits (4, 3, 7, 0; RMS distances ≥ 0.66), so "same
# image" is well posed at pixel_l2's −0.25 (the default permutation starts with three 6s 0.25 apart)
CAPS = {"mlp128": {"model": dict(name="mlp", width=128, depth=4, emb_dim=128), "data": dict(subset_seed=2)},
        "mlp128d3": {"model": dict(name="mlp", width=128, depth=3, emb_dim=64), "data": dict(subset_seed=2)}}
SMALL_N, LARGE_N = 4, 1797


def quiet(*args):
    pass


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return str(tmp_path_factory.mktemp("models"))


def tiny(module, models_dir, tmp_path, **kw):
    cfg = module.get_config("small")
    cfg.models_dir, cfg.out_dir = models_dir, str(tmp_path / cfg.name)
    cfg.num_seeds, cfg.train_steps = 64, 2000
    cfg.train_steps_by_n = {str(LARGE_N): 500}       # under-fitting is the point at N = 1797; no need to train long
    if "capacities" in cfg:
        cfg.capacities = CAPS
    if "gap_images" in cfg:
        cfg.gap_images = 32
    for k, v in kw.items():
        cfg[k] = v
    return cfg


@pytest.fixture(scope="module")
def regimes_result(models, tmp_path_factory):
    cfg = tiny(regimes_cfg, models, tmp_path_factory.mktemp("r"), ns=[SMALL_N, LARGE_N])
    res = regimes.run(cfg, log=quiet)
    return res, regimes.figure(res, os.path.join(cfg.out_dir, "regimes.png"))


def test_regimes_memorize_small_n_and_generalize_at_full_digits(regimes_result):
    res, png = regimes_result
    small, large = res["rows"]
    for cap in CAPS:
        # memorization: the model's sample lands on the oracle's training image and is a copy of it
        # (GL as the paper defines it, 1 − P(max_i M(x, y_i) > t), pixel_l2 at t = −0.25)
        assert small[cap]["same_image_rate"] >= 0.8, small[cap]
        assert small[cap]["gl_desc"] <= 0.2, small[cap]
        # generalization: 500 steps cannot copy 1797 images; Gu's ratio test finds no copies
        assert large[cap]["gl"] >= 0.8, large[cap]
        assert all(np.isfinite(list(small[cap]["gap"].values())))
    for row in (small, large):            # Theorem 1: the oracle only ever reproduces training images
        assert row["oracle"]["gl"] == 0.0 and row["oracle"]["gl_desc"] == 0.0
    assert os.path.getsize(png) > 1000


def test_theory_same_solver_agrees_in_memorization(regimes_result, models, tmp_path):
    cfg = tiny(theory_cfg, models, tmp_path, ns=[SMALL_N])
    res = theory.run(cfg, log=quiet)
    rec = res["rows"][0]["mlp128"]
    assert rec["heun/heun"]["same_image_rate"] >= 0.8
    assert set(rec) == {"heun/heun", "euler/euler", "heun/euler", "gap"}
    assert len(rec["gap"]) == 18                            # one gap per σ > 0 of the 18-step grid
    theory.figure(res, os.path.join(cfg.out_dir, "theory.png"))


def test_oracle_basins_are_nearest_image_cells_at_small_sigma():
    """Started at σ = 0.05 from a point z, the oracle's flow ends on the training image nearest to z."""
    images, _ = data_lib.load_dataset("digits")
    train = images[:6]
    z = plane_latents(train[:3], np.linspace(-0.2, 1.2, 15), np.linspace(-0.2, 1.2, 15)).reshape(-1, 8, 8, 1)
    d = np.sort(((z.reshape(len(z), 1, -1) - train.reshape(1, 6, -1)) ** 2).sum(-1), axis=1)
    clear = np.sqrt(d[:, 1]) - np.sqrt(d[:, 0]) > 0.5          # away from the cell boundaries
    sig = sigma_grid("edm", 18, sigma_min=0.002, sigma_max=0.05)
    basins, x = basin_map(make_optimal_denoiser(train), z / 0.05, train, sig, "heun")
    expect = nearest_index(z, train)                            # Voronoi cells of the training images
    assert clear.sum() > 100
    assert np.array_equal(basins[clear], expect[clear])
    assert np.max(np.abs(x[clear] - train[expect[clear]])) < 0.02


def test_hyperplane_corners_are_the_seed_samples(regimes_result, models, tmp_path):
    cfg = tiny(hyperplane_cfg, models, tmp_path, n=SMALL_N, grid=6, extent=(0.0, 1.0))
    res = hyperplane.run(cfg, log=quiet)
    oracle = np.asarray(res["basins"]["oracle"])                  # [β, α]; ε1 at (0, 0), ε2 at (1, 0), ε3 at (0, 1)
    job = rt.model_job(cfg, SMALL_N, "mlp128", CAPS["mlp128"], log=quiet)
    seeds_nn = nearest_index(rt.draw(job, rt.oracle_fn(job), np.array([0, 1, 2])), job.images)
    assert [oracle[0, 0], oracle[0, -1], oracle[-1, 0]] == seeds_nn.tolist()
    for key, value in res["agreement"].items():
        assert 0.0 <= value <= 1.0
    assert res["agreement"]["mlp128|oracle"] >= 0.6             # a memorizing model shares the oracle's basins
    hyperplane.figure(res, os.path.join(cfg.out_dir, "hyperplane.png"))


def test_churn_lowers_rp(regimes_result, models, tmp_path):
    cfg = tiny(churn_cfg, models, tmp_path, ns=[LARGE_N], s_churn=[0.0, 8.0])
    res = churn.run(cfg, log=quiet)
    det, noisy = res["rows"][0]["by_s_churn"]
    # S_churn = 0 is the deterministic sampler itself: identical samples
    assert det["a_vs_a_deterministic"]["rp"] == 1.0
    assert noisy["a_vs_a_deterministic"]["rp"] <= det["a_vs_a_deterministic"]["rp"] - 0.3
    assert noisy["a_vs_b_independent_noise"]["rp"] < det["a_vs_b_independent_noise"]["rp"]
    churn.figure(res, os.path.join(cfg.out_dir, "churn.png"))


def test_cross_model_matrix(regimes_result, models, tmp_path):
    cfg = tiny(cross_model_cfg, models, tmp_path, ns=[SMALL_N], reference="mlp128",
               models={"mlp128": CAPS["mlp128"], "mlp128_vp": {**CAPS["mlp128"], "precond": "vp",
                                                                  "loss": dict(kind="vp")}})
    res = cross_model.run(cfg, log=quiet)
    rec = res["regimes"][0]
    names, rp = rec["names"], np.asarray(rec["rp"])
    assert names[0] == "mlp128" and names[-1] == "oracle" and "mlp128:dpmpp2m" in names
    assert np.allclose(rp, rp.T) and np.all(np.diag(rp) == 1)
    # Heun and DPM-Solver++(2M) integrate the same ODE to second order: the same images
    assert rp[0, names.index("mlp128:dpmpp2m")] >= 0.8
    assert rec["same_vs_oracle"]["mlp128"] >= 0.8
    assert os.path.exists(os.path.join(cfg.out_dir, f"cross_model_n{SMALL_N}.png"))


def test_conditional_oracle_stays_in_class(models, tmp_path):
    caps = {"c128": {"model": dict(name="mlp", width=128, depth=4, emb_dim=128, num_classes=10)}}
    cfg = tiny(conditional_cfg, models, tmp_path, ns=[34], cond_models=caps, uncond_model=("mlp128s0", {"model": CAPS["mlp128"]["model"]}))
    res = conditional.run(cfg, log=quiet)
    row = res["rows"][0]
    assert row["classes_present"] == list(range(10))           # N = 34: the first subset holding every digit
    assert row["gl"]["oracle_cond"] == 0.0                       # the conditional oracle copies training images …
    assert row["oracle_cond_in_class"] == 1.0                    # … of the seed's class only
    for value in row["rp_between"].values():
        assert 0.0 <= value <= 1.0
    # a memorizing conditional model lands on the conditional oracle's image
    assert row["rp_cond"]["c128|oracle_cond"]["same_image_rate"] >= 0.7
    assert os.path.getsize(conditional.figure(res, os.path.join(cfg.out_dir, "conditional.png"))) > 1000


def test_decision_sigma_hybrid_switches_per_row_at_s():
    """The hybrid denoiser is `high` exactly where σ > s (row by row, σ = s goes low), `low` elsewhere."""
    import jax
    import jax.numpy as jnp
    import decision_sigma
    high = jax.tree_util.Partial(lambda x, sigma, labels=None: jnp.ones_like(x))
    low = jax.tree_util.Partial(lambda x, sigma, labels=None: -jnp.ones_like(x))
    den = decision_sigma.hybrid(high, low, 1.0)
    out = np.asarray(den(jnp.zeros((4, 2, 2, 1)), jnp.array([0.5, 2.0, 1.0, 1.0001])))
    np.testing.assert_array_equal(out[:, 0, 0, 0], [-1, 1, -1, 1])
    assert np.asarray(den(jnp.zeros((1, 2, 2, 1)), 3.0)).min() == 1          # scalar σ broadcast to the batch


@pytest.mark.parametrize("name", ["cross_model", "inverse_problems", "invertibility"])
def test_paper_variants_only_augment_networks_that_take_augment_labels(name):
    """Every model of a paper variant, built from cifar_small (augment_p 0.12) plus its overrides, either
    has EDM's 9 augment labels or trains without augmentation — what Job refuses before any compute."""
    import importlib
    from jaxrepro.run import _model_from
    cfg = importlib.import_module(f"configs.experiments.{name}").get_config("paper")
    for tag, overrides in cfg.models.items():
        c = rt.set_keys(rt.base_config(cfg.data, cfg.ns[0]), dict(overrides))
        aug_dim = getattr(_model_from(c), "augment_dim", 0)
        assert c.train.augment_p == 0 or aug_dim == 9, (name, tag, c.train.augment_p, aug_dim)
