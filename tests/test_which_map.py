"""experiments/which_map.py and experiments/disjoint.py at a tiny size: what must hold, and that both write their records."""
import json
import os
import sys
import types

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import disjoint  # noqa: E402
import smoothing  # noqa: E402
import which_map  # noqa: E402
from common import write_results  # noqa: E402
from configs.experiments import disjoint as disjoint_config  # noqa: E402
from configs.experiments import smoothing as smoothing_config  # noqa: E402
from configs.experiments import which_map as which_map_config  # noqa: E402
from jaxrepro import data as data_lib  # noqa: E402
from jaxrepro import maps  # noqa: E402
from jaxrepro.kernels import edm_sigmas  # noqa: E402


def tiny_which_map(tmp_path):
    c = which_map_config.get_config("small")
    c.update(ns=[8], train_steps=40, ddpm_ns=[], molrg_ns=[8, 64], molrg_steps=40, num_queries=4,
             candidates=(1,), lams=(0.05,), num_noise=2, models_dir=str(tmp_path / "models"),
             out_dir=str(tmp_path / "out"))
    c.models = {"mlp_tiny": {"model": dict(name="mlp_tiny")}}
    c.molrg_capacities = {"tiny": dict(name="mlp", width=32, depth=2, emb_dim=16)}
    return c


def fake_job(images):
    return types.SimpleNamespace(images=images, shape=images.shape[1:], sigmas=np.asarray(edm_sigmas(18)))


def test_a_memorizer_is_theorem_1_not_a_patch_map():
    """Model = Theorem 1 of 8 digits (a perfect memorizer): Theorem 1 explains it exactly, LS / ELS with
    patches ≤ 3 and σ-CFDM (λ > 0) do not; a 15×15 LS patch covers the 8×8 image and is Theorem 1 again."""
    images, _ = data_lib.subset(*data_lib.load_dataset("digits"), 8)
    cfg = types.SimpleNamespace(num_queries=8, sigma_stride=4, candidates=(1, 3), lams=(0.1,), num_noise=2)
    memorizer = maps.make_map("theorem1", images)
    res = which_map.map_scores(cfg, fake_job(images), memorizer)
    job = fake_job(images)
    states = which_map.trajectory_states(memorizer, np.arange(8), job.shape, job.sigmas, 4)
    ref = {s: which_map._apply(memorizer, x, s) for s, x in states.items()}
    assert res["theorem1"]["r2_median"] > 0.9999 and res["theorem1"]["gap_mean"] < 1e-6
    for m in ("ls", "els", "smoothed"):
        assert res[m]["r2_median"] < res["theorem1"]["r2_median"] - 1e-3, (m, res[m]["r2_median"])
    for m in ("ls", "els"):      # the calibrated record's gap, from the table, equals a direct evaluation
        direct = which_map.score(maps.make_map(m, images, sizes=res[m]["sizes"], edges=res[m]["edges"]), states, ref)
        assert all(np.isclose(direct["gap"][k], g, rtol=1e-4, atol=1e-7) for k, g in res[m]["gap"].items())
    assert which_map.score(maps.make_map("ls", images, sizes=(15,)), states, ref)["r2_median"] > 0.9999


def test_population_model_follows_the_population_map():
    """Model = the MoLRG population oracle: population r² = 1, and it beats Theorem 1 of 8 samples."""
    x, _, bases = data_lib.molrg(n=8)
    cfg = types.SimpleNamespace(num_queries=8, sigma_stride=4, candidates=(1,), lams=(0.1,), num_noise=2)
    pop = maps.make_map("population", x, bases=bases)
    res = which_map.map_scores(cfg, fake_job(x), pop, bases, patch_maps=False)
    assert res["population"]["r2_median"] > 0.9999
    assert res["population"]["gap_mean"] < res["theorem1"]["gap_mean"]


def test_crossover():
    assert which_map.crossover([8, 16, 32], [1.0, 2.0, 4.0], [2.0, 2.0, 2.0]) == pytest.approx(16.0)
    assert 16 < which_map.crossover([8, 16, 32], [1.0, 1.0, 4.0], [2.0, 2.0, 2.0]) < 32
    assert which_map.crossover([8, 16], [1.0, 1.0], [2.0, 3.0]) is None
    assert which_map.crossover([8, 16], [3.0, 1.0], [2.0, 3.0]) == 8.0


def test_which_map_end_to_end_tiny(tmp_path):
    cfg = tiny_which_map(tmp_path)
    res = which_map.run(cfg, log=lambda *a: None)
    assert [r["n"] for r in res["digits"]["mlp_tiny"]] == [8]
    row = res["digits"]["mlp_tiny"][0]
    assert set(row) == {"n", "theorem1", "ls", "els", "smoothed"}
    assert set(res["molrg"]["tiny"][0]) == {"n", "theorem1", "smoothed", "population"}
    for rec in row.values():
        if isinstance(rec, dict):
            assert all(np.isfinite(v) and v >= 0 for v in rec["gap"].values()) and len(rec["r2"]) == 7
    assert "tiny" in res["molrg_crossover_n"]
    write_results(cfg.out_dir, res)
    png = which_map.figure(res, os.path.join(cfg.out_dir, "which_map.png"))
    assert os.path.getsize(png) > 1000
    with open(os.path.join(cfg.out_dir, "results.json")) as f:
        assert json.load(f)["molrg"]["tiny"][1]["n"] == 64


def test_disjoint_end_to_end_tiny(tmp_path):
    cfg = disjoint_config.get_config("small")
    cfg.update(ns=[8], train_steps=40, num_seeds=16, tag="mlp_tiny", models_dir=str(tmp_path / "models"))
    cfg.model = {"model": dict(name="mlp_tiny")}
    res = disjoint.run(cfg, log=lambda *a: None)
    row = res["rows"][0]
    assert row["shared_training_images"] == 0
    for k in ("disjoint", "same_set"):
        assert 0 <= row[k]["rp"] <= 1 and row[k]["mean_abs"] > 0
    assert os.path.getsize(disjoint.figure(res, str(tmp_path / "d.png"))) > 1000
    with pytest.raises(ValueError, match="per half"):
        disjoint.second_half(cfg, 899)


def test_smoothing_moves_samples_off_the_training_set(tmp_path):
    """λ = 0 is Theorem 1 (samples are training digits: GL 0); λ = 3 lands farther from every training image."""
    cfg = smoothing_config.get_config("small")
    cfg.update(lams=(0.0, 3.0), n=8, num_seeds=16, num_noise=2, num_reference=8, out_dir=str(tmp_path))
    res = smoothing.run(cfg, log=lambda *a: None)
    r0, r1 = res["rows"]
    assert r0["gl"] == 0.0 and r0["vs_theorem1"]["rp"] == 1.0
    assert r1["nn_distance"]["median"] > r0["nn_distance"]["median"] + 0.05
    assert os.path.getsize(smoothing.figure(res, str(tmp_path / "s.png"))) > 1000
