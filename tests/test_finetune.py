"""Fine-tuning: train.trainable freezes parameters bit for bit; train.init_from starts from another run."""
import json
import os

import jax
import numpy as np
import pytest

from configs import quickstart
from jaxrepro.losses import LossConfig
from jaxrepro.models import ModelApply, get_model, init_params
from jaxrepro.precond import Precond
from jaxrepro.run import Job
from jaxrepro.train import TrainConfig, param_paths, train

SHAPE = (4, 4, 1)


def flat(params):
    """{path: array} of a parameter tree."""
    return dict(zip(jax.tree_util.tree_leaves(param_paths(params)), map(np.asarray, jax.tree_util.tree_leaves(params))))


def bits_equal(a, b):
    """Bit identity (also tells −0.0 from +0.0 and compares NaN payloads)."""
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def run(workdir, **kw):
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (24, *SHAPE)).astype(np.float32)
    model = get_model("mlp_tiny")
    params = init_params(model, SHAPE, 0)
    cfg = TrainConfig(**{**dict(batch_size=8, num_steps=6, lr=1e-2, warmup_images=8, log_every=6, ckpt_every=6,
                                ema_halflife_images=16, grad_clip=1.0), **kw})
    state = train(str(workdir), images, np.zeros(24, np.int32), ModelApply(model), params, Precond("edm"),
                  LossConfig("edm"), cfg, log=lambda *_: None)
    return flat(params), flat(state.params), flat(state.ema_params)


def test_frozen_parameters_stay_bit_identical_while_the_rest_trains(tmp_path):
    init, params, ema = run(tmp_path, trainable=r"^params/(fc1|out)/")
    trained = [p for p in init if p.startswith(("params/fc1/", "params/out/"))]
    assert len(trained) == 4 and len(init) > 8
    for path in init:
        if path in trained:   # every trainable leaf moved (Adam with lr 1e-2 changes every weight)
            assert not np.any(params[path] == init[path]), path
        else:
            assert bits_equal(params[path], init[path]) and bits_equal(ema[path], init[path]), path


def test_a_pattern_matching_everything_trains_exactly_as_no_pattern(tmp_path):
    """The masked optimiser (multi_transform) gives the plain optimiser's updates bit for bit."""
    _, p_all, e_all = run(tmp_path / "all")
    _, p_dot, e_dot = run(tmp_path / "dot", trainable=".")
    for path in p_all:
        assert bits_equal(p_all[path], p_dot[path]) and bits_equal(e_all[path], e_dot[path]), path


def test_bad_patterns_are_refused_before_compute(tmp_path):
    with pytest.raises(ValueError, match="regular expression"):
        TrainConfig(trainable="fc[")
    with pytest.raises(ValueError, match="matches no parameter"):
        run(tmp_path, trainable="attn")
    with pytest.raises(ValueError, match="init_params must be"):
        TrainConfig(init_params="best")


def digits(**train):
    c = quickstart.get_config("n=24")
    c.model = dict(name="mlp_tiny")
    c.train.update(batch_size=8, num_steps=4, log_every=4, ckpt_every=4, **train)
    return c


def test_init_from_another_run_then_finetune_a_subset(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    with pytest.raises(FileNotFoundError, match="holds no run"):
        Job(digits(init_from=src), dst, writes=True)
    Job(digits(), src, writes=True, log=lambda *_: None).train()
    ema = flat(Job(digits(), src, log=lambda *_: None).ema_params("ema"))
    raw = flat(Job(digits(), src, log=lambda *_: None).ema_params("raw"))
    fresh = flat(init_params(get_model("mlp_tiny"), (8, 8, 1), 0))
    for path in ema:                                                       # the source trained; EMA ≠ raw
        assert not bits_equal(raw[path], fresh[path]) and not bits_equal(raw[path], ema[path]), path
    job = Job(digits(init_from=src, init_params="ema", trainable="^params/out/"), dst, writes=True,
              log=lambda *_: None)
    job.train()
    tuned = flat(job.ema_params("raw"))
    for path in ema:
        same = bits_equal(tuned[path], ema[path])
        assert same != path.startswith("params/out/"), path                # frozen = the source's EMA, the rest moved
    other = digits(init_from=src)
    other.model = dict(name="mlp_tiny", width=32)
    with pytest.raises(ValueError, match="different model"):
        Job(other, str(tmp_path / "b"), writes=True, log=lambda *_: None).train()


def test_a_run_written_before_the_finetuning_fields_still_reopens(tmp_path):
    """…and before compute_dtype, steps_per_execution and micro_batch; the last two may change on a rerun."""
    wd = str(tmp_path / "old")
    Job(digits(), wd, writes=True, log=lambda *_: None)
    path = os.path.join(wd, "config.json")
    cfg = json.load(open(path))
    for key in ("trainable", "init_from", "init_params", "compute_dtype", "steps_per_execution", "micro_batch"):
        del cfg["train"][key]
    json.dump(cfg, open(path, "w"))
    Job(digits(), wd, log=lambda *_: None)                                 # no "different config" refusal
    Job(digits(steps_per_execution=4, micro_batch=8), wd, log=lambda *_: None)
    with pytest.raises(ValueError, match="different config"):
        Job(digits(compute_dtype="bfloat16"), wd, log=lambda *_: None)
    with pytest.raises(ValueError, match="different config"):
        Job(digits(trainable="out"), wd, log=lambda *_: None)
