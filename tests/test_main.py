"""End-to-end: the absl entry point on small settings, and its refusals of bad input."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "jaxrepro.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_quickstart_config_end_to_end(tmp_path):
    wd = str(tmp_path / "run")
    small = ["--config=configs/quickstart.py", f"--workdir={wd}", "--config.train.num_steps=300",
             "--config.train.log_every=100", "--config.train.ckpt_every=150", "--config.sample.num_seeds=100",
             "--config.compare.fpr=0.02"]
    out = main(*small)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step 300/300" in out.stdout and "same-image rate" in out.stdout
    rec = json.load(open(os.path.join(wd, "compare.json")))
    assert rec["num_seeds"] == 100 and 0 <= rec["same_image_rate"] <= 1 and len(rec["denoiser_gap"]) == 18
    for f in ["config.json", "metrics.jsonl", "compare_grid.png", "denoiser_gap.png", "similarity_hist.png"]:
        assert os.path.exists(os.path.join(wd, f)), f
    # the same workdir resumes (nothing left to train) and samples / generates teacher data
    out = main(*small, "--mode=generate", "--config.generate.num_images=8")
    assert out.returncode == 0, out.stderr[-3000:]
    gen = os.path.join(wd, "generated.npz")
    import numpy as np
    with np.load(gen) as f:
        assert f["images"].shape == (8, 8, 8, 1)
    # a different config in the same workdir is refused and nothing is overwritten
    before = open(os.path.join(wd, "config.json")).read()
    out = main("--config=configs/quickstart.py", f"--workdir={wd}", "--config.model.width=64")
    assert out.returncode != 0 and "different config" in out.stderr
    assert open(os.path.join(wd, "config.json")).read() == before


@pytest.mark.parametrize("flag,message", [
    ("--config.model.name=resnet", "unknown model 'resnet'"),
    ("--config.data.n=5000", "N=5000 must be in [1, 1797]"),
    ("--config.sample.sigma_min=0.0", "sigma_min"),
    ("--config.sample.solver=rk45", "unknown solver 'rk45'"),
    ("--config.precond=ddpm", "unknown preconditioning 'ddpm'"),
    ("--config.data.name=mnist", "unknown data set 'mnist'"),
    ("--config.compare.descriptor=sscd", "no converted SSCD checkpoint"),
])
def test_bad_config_is_refused_before_compute(tmp_path, flag, message):
    out = main("--config=configs/quickstart.py", f"--workdir={tmp_path / 'w'}", flag, timeout=300)
    assert out.returncode != 0 and message in out.stderr, out.stderr[-2000:]
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_image_shape_the_model_cannot_take(tmp_path):
    sys.path.insert(0, ROOT)
    from configs import quickstart
    from jaxrepro.run import Job
    c = quickstart.get_config()
    c.model = dict(name="uvit_tiny", patch_size=3)
    with pytest.raises(ValueError, match=r"cannot take images of shape \(8, 8, 1\)"):
        Job(c, str(tmp_path / "w"), writes=True)
    assert not os.path.exists(tmp_path / "w")


def test_compare_without_training_says_so(tmp_path):
    out = main("--config=configs/quickstart.py", f"--workdir={tmp_path}", "--mode=compare", timeout=300)
    assert out.returncode != 0 and "no run" in out.stderr


def test_info_prints_parameters_and_flops():
    out = main("--config=configs/quickstart.py", "--mode=info", timeout=300)
    assert out.returncode == 0 and "parameters" in out.stdout and "GFLOPs" in out.stdout, out.stderr[-2000:]


def test_cifar_small_one_step_and_two_seed_compare_on_mock_data(tmp_path):
    """configs/cifar_small.py as written (DDPM++ C=64, VP, augmentation) on tfds mock data: 1 step, 2 seeds."""
    import tensorflow_datasets as tfds
    sys.path.insert(0, ROOT)
    from configs import cifar_small
    from jaxrepro.run import Job
    c = cifar_small.get_config()
    c.data.data_dir = str(tmp_path / "tfds")
    c.train.update(batch_size=2, num_steps=1, log_every=1, ckpt_every=1, sample_every=0)
    c.sample.num_seeds = 2
    c.compare.gap_images = 2
    logs = []
    with tfds.testing.mock_data(num_examples=1024, data_dir=c.data.data_dir):
        job = Job(c, str(tmp_path / "run"), writes=True, log=logs.append)
        assert job.images.shape == (1024, 32, 32, 3)
        job.train()
        res = job.compare()
    assert any("step 1/1" in line for line in logs)
    assert res["num_seeds"] == 2 and res["num_train"] == 1024 and len(res["denoiser_gap"]) == 18


@pytest.mark.parametrize("key,value,message", [
    ("train.lr", float("nan"), "train.lr must be a finite number > 0, got nan"),
    ("train.lr", float("inf"), "train.lr must be a finite number > 0, got inf"),
    ("train.lr", 0.0, "train.lr must be a finite number > 0, got 0.0"),
    ("train.warmup_images", -1, "train.warmup_images must be a finite number >= 0, got -1"),
    ("train.ema_halflife_images", -5, "train.ema_halflife_images must be a finite number >= 0, got -5"),
    ("train.grad_clip", -1.0, "train.grad_clip must be a finite number >= 0, got -1.0"),
    ("model.width", 0, "mlp: width must be > 0, got 0"),
    ("sample.rho", 0.0, "sample.rho must be > 0, got 0.0"),
    ("sample.num_seeds", 0, "sample.num_seeds must be >= 1, got 0"),
    ("compare.fpr", 1.5, "compare.fpr must be in (0, 1), got 1.5"),
    ("data.n", 1, "data.n=1: comparisons need >= 2 training images"),
])
def test_bad_values_fail_in_job_init_naming_the_value(tmp_path, key, value, message):
    sys.path.insert(0, ROOT)
    from configs import quickstart
    from jaxrepro.run import Job
    c = quickstart.get_config()
    section, name = key.split(".")
    if section == "model":
        c.model = dict(name="mlp", **{name: value})
    else:
        c[section][name] = value
    with pytest.raises(ValueError) as err:
        Job(c, str(tmp_path / "w"), writes=True)
    assert message in str(err.value)
    assert not os.path.exists(tmp_path / "w")


def test_override_of_a_key_the_config_lacks_is_one_clear_error(tmp_path):
    out = main("--config=configs/quickstart.py", f"--workdir={tmp_path}", "--config.sample.schedul=vp", timeout=300)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "names a key the config does not have" in out.stderr and "schedule" in out.stderr, out.stderr[-2000:]
