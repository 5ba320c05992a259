import glob
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from jaxrepro.losses import LossConfig
from jaxrepro.models import ModelApply, get_model, init_params
from jaxrepro.precond import Precond
from jaxrepro.train import NonFiniteError, TrainConfig, batch_positions, ema_beta, train

SHAPE = (4, 4, 1)


def setup(n=24, seed=0, **model_kw):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (n, *SHAPE)).astype(np.float32)
    labels = rng.integers(0, model_kw.get("num_classes", 1), n).astype(np.int32)
    model = get_model("mlp_tiny", **model_kw)
    return images, labels, ModelApply(model), init_params(model, SHAPE, 0)


def run(workdir, num_steps, images=None, _kill_during_save=None, log=lambda *_: None, fresh_start=False, **kw):
    imgs, labels, apply_fn, params = setup()
    imgs = imgs if images is None else images
    cfg = TrainConfig(**{**dict(batch_size=8, num_steps=num_steps, lr=1e-2, warmup_images=40, log_every=2,
                                ckpt_every=2, keep_ckpts=3, ema_halflife_images=16), **kw})
    return train(str(workdir), imgs, labels, apply_fn, params, Precond("edm"), LossConfig("edm"), cfg,
                 log=log, fresh_start=fresh_start, _kill_during_save=_kill_during_save)


def leaves(state):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves((state.params, state.ema_params, state.opt_state))]


def assert_identical(a, b):
    for x, y in zip(leaves(a), leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_ema_half_life_with_ramp_up():
    cfg = TrainConfig(batch_size=128, ema_halflife_images=500_000, ema_rampup=0.05)
    for step in [0, 10, 1000, 100_000]:
        seen = (step + 1) * 128
        expected = 0.5 ** (128 / min(500_000, 0.05 * seen))
        assert float(ema_beta(step, cfg)) == pytest.approx(expected, rel=1e-6)


def test_batches_are_a_pure_function_of_seed_and_step():
    idx, pos = batch_positions(5, 8, 20, seed=3)
    np.testing.assert_array_equal(pos, np.arange(40, 48))
    perm2 = np.random.default_rng([3, 2]).permutation(20)
    np.testing.assert_array_equal(idx, perm2[np.arange(40, 48) % 20])
    seen = np.concatenate([batch_positions(s, 8, 20, 3)[0] for s in range(5)])   # 40 = 2 epochs
    assert sorted(seen[:20]) == list(range(20)) and sorted(seen[20:40]) == list(range(20))


def test_training_reduces_the_loss(tmp_path):
    run(tmp_path, 1000, log_every=250, ckpt_every=1000, lr=2e-3)
    recs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in recs] == [250, 500, 750, 1000]
    assert recs[-1]["loss"] < 0.9 * recs[0]["loss"] and recs[-1]["images_per_s"] > 0


def test_resume_is_bit_identical(tmp_path):
    full = run(tmp_path / "full", 6)
    run(tmp_path / "split", 4)
    resumed = run(tmp_path / "split", 6)
    assert int(resumed.step) == 6
    assert_identical(full, resumed)


def test_kill_during_save_then_resume(tmp_path):
    """SIGKILL while the step-4 save is in flight: the rerun resumes from step 2 and ends identical."""
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_train import run
        run({str(tmp_path / 'killed')!r}, 6, _kill_during_save=4)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == -9, out.stderr[-2000:]
    logs = []
    resumed = run(tmp_path / "killed", 6, log=logs.append)
    assert logs[0].startswith("resumed from checkpoint at step 2"), logs
    assert_identical(run(tmp_path / "full", 6), resumed)


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path, capsys):
    run(tmp_path / "c", 6)
    for f in glob.glob(str(tmp_path / "c" / "checkpoints" / "6" / "**" / "*"), recursive=True):
        if os.path.isfile(f) and "ocdbt" in f or "/d/" in f:
            with open(f, "r+b") as fh:
                fh.truncate(3)
    resumed = run(tmp_path / "c", 8)
    assert "does not restore" in capsys.readouterr().out
    assert os.path.isdir(tmp_path / "c" / "checkpoints_corrupt" / "6")
    assert_identical(run(tmp_path / "full", 8), resumed)


def test_all_checkpoints_corrupt_is_an_error_not_a_fresh_start(tmp_path):
    run(tmp_path / "c", 2, keep_ckpts=1)
    for f in glob.glob(str(tmp_path / "c" / "checkpoints" / "2" / "**" / "*"), recursive=True):
        if os.path.isfile(f):
            open(f, "wb").close()
    with pytest.raises(RuntimeError, match="refusing to start afresh"):
        run(tmp_path / "c", 4)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    images, *_ = setup()
    images[5] = np.nan
    first = next(s for s in range(100) if 5 in batch_positions(s, 8, 24, 0)[0])
    with pytest.raises(NonFiniteError, match=f"non-finite loss at step {first}"):
        run(tmp_path, 20, images=images, ckpt_every=1, log_every=1)
    from jaxrepro.checkpoint import Checkpointer
    steps = Checkpointer(str(tmp_path / "checkpoints")).steps()
    assert max(steps) == first


def test_data_parallel_and_micro_batches_match_one_device():
    """5 steps on 8 forced CPU devices, on 8 devices in 2 micro-batches of 8, and on 8 devices two optimiser
    steps per call (steps 0–1 and 2–3 in one call each, step 4 alone) — the last two also with the loops
    rolled, as on GPUs and TPUs — equal the 1-device run for the same
    global batch — with dropout and label dropout on, so every example's mask must come from its own stream
    position, not from where it sits in the batch (a batch-wide mask would differ by O(1)); a step of a
    two-step call fed another step's rows, key or learning rate would differ by O(1) as well.

    The runs differ only in the order in which the batch gradient is summed (per device, then
    across devices) and in how XLA fuses the two-step program (a contracted multiply-add: one rounding,
    eps64, per operation). The run is in float64 so that these stay ≤ B·eps64·Σ|g| ≈ 4e-15 of the gradient; Adam divides by √v, which can magnify a relative gradient error for an element by at
    most max|g|/|g| of its own history (< 1e4 here), so parameters agree to < 1e-10 relative. rtol 1e-8
    holds on any machine; float32 (eps 1.2e-7 × that magnification) would not give a bound worth asserting.
    """
    script = textwrap.dedent(f"""
        import json, sys, tempfile; sys.path.insert(0, {os.path.dirname(__file__)!r})
        import jax, jax.numpy as jnp, numpy as np
        jax.config.update("jax_enable_x64", True)
        assert jax.device_count() == 8
        from test_train import setup, leaves
        from jaxrepro.losses import LossConfig
        from jaxrepro.precond import Precond
        from jaxrepro.train import TrainConfig, train
        imgs, labels, apply_fn, params = setup(dropout=0.3, num_classes=3, label_dropout=0.3)
        params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), params)
        imgs = imgs.astype(np.float64)
        cfg = TrainConfig(batch_size=16, num_steps=5, lr=1e-2, warmup_images=40, log_every=5, ckpt_every=5)
        micro = TrainConfig(**{{**cfg.__dict__, "micro_batch": 8}})
        two = TrainConfig(**{{**cfg.__dict__, "steps_per_execution": 2}})
        runs = [(cfg, jax.devices()[:1]), (cfg, jax.devices()), (micro, jax.devices()), (two, jax.devices())]
        import jaxrepro.train as train_lib          # then the rolled loops GPUs and TPUs get (CPU unrolls them)
        runs += [("rolled", c, jax.devices()) for c in (micro, two)]
        outs, dirs = [], []
        for *rolled, c, d in runs:
            train_lib._scan_unroll = (lambda length: 1) if rolled else (lambda length: length)
            dirs.append(tempfile.mkdtemp())
            outs.append(train(dirs[-1], imgs, labels, apply_fn, params, Precond("edm"), LossConfig("edm"),
                              c, conditional=True, log=lambda *_: None, devices=d))
        assert all(a.dtype == np.float64 for a in leaves(outs[0]) if a.dtype.kind == "f")
        for other in outs[1:]:
            for a, b in zip(leaves(outs[0]), leaves(other)):
                np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)
        # the step-5 record: mean loss over steps 0–4 (with two steps per call: from calls of 2, 2 and 1)
        recs = [json.loads(open(d + "/metrics.jsonl").read()) for d in dirs]
        for r in recs[1:]:
            np.testing.assert_allclose([r["loss"], r["grad_norm"]], [recs[0]["loss"], recs[0]["grad_norm"]], rtol=1e-8)
        print("OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_rerun_with_fewer_steps_says_it_is_past(tmp_path):
    run(tmp_path, 4)
    logs = []
    state = run(tmp_path, 2, log=logs.append)
    assert int(state.step) == 4 and any("already at or past num_steps=2" in line for line in logs), logs


def test_bfloat16_compute_keeps_float32_state_and_loss_parity(tmp_path):
    """Mixed precision: the network runs in bfloat16, parameters / Adam / EMA stay float32. Both runs draw
    the same batches, σ and noise, so their logged losses (means over 50 steps × 8 examples) differ only by
    bfloat16 rounding of the forward and backward passes: unit roundoff 2^-8 ≈ 0.4 %, a few roundoffs per
    example at most → assert ≤ 2 %; a mis-cast layer (e.g. a normalisation in bfloat16 statistics gone wrong)
    would move the loss by far more. Measured here: ≤ 1e-4."""
    runs = {}
    for dt in ("float32", "bfloat16"):
        state = run(tmp_path / dt, 200, log_every=50, ckpt_every=200, lr=2e-3, compute_dtype=dt)
        assert all(leaf.dtype == np.float32 for leaf in leaves(state) if leaf.dtype.kind == "f")
        runs[dt] = np.array([json.loads(line)["loss"] for line in open(tmp_path / dt / "metrics.jsonl")])
    rel = np.abs(runs["bfloat16"] / runs["float32"] - 1)
    assert rel.max() <= 0.02 and rel.max() > 0, rel       # > 0: the bfloat16 path is really taken
    with pytest.raises(ValueError, match="compute_dtype must be float32 or bfloat16"):
        TrainConfig(compute_dtype="float16")


def test_steps_per_execution_runs_whole_calls_between_events(tmp_path, monkeypatch):
    """steps_per_execution = 3, records every 4 steps, 9 steps: calls of 3 steps where no record, checkpoint
    or end falls inside (0–2, 4–6), single steps before each event (3, 7, 8); records and checkpoints at the
    same steps as a one-step-per-call run; with samples every 6 steps too, step 4 runs alone (4–6 would
    pass step 6), and 8–10 in one call. (That the steps of a call equal single steps, and the records' values, is the 8-device test's.)"""
    import jaxrepro.train as train_lib
    calls, make = [], train_lib.make_train_step

    def spy(*args, steps=1, **kw):
        fn = make(*args, steps=steps, **kw)
        return lambda state, *batch: (calls.append((int(state.step), steps, batch[0].shape)), fn(state, *batch))[1]
    monkeypatch.setattr(train_lib, "make_train_step", spy)
    multi = run(tmp_path / "k3", 9, log_every=4, ckpt_every=8, steps_per_execution=3)
    assert calls == [(0, 3, (3, 8, *SHAPE)), (3, 1, (8, *SHAPE)), (4, 3, (3, 8, *SHAPE)), (7, 1, (8, *SHAPE)),
                     (8, 1, (8, *SHAPE))], calls
    assert int(multi.step) == 9
    run(tmp_path / "k1", 9, log_every=4, ckpt_every=8)
    recs = [[json.loads(line) for line in open(tmp_path / k / "metrics.jsonl")] for k in ("k3", "k1")]
    assert [r["step"] for r in recs[0]] == [r["step"] for r in recs[1]] == [4, 8, 9]
    from jaxrepro.checkpoint import Checkpointer
    assert Checkpointer(str(tmp_path / "k3" / "checkpoints")).steps() == [8, 9]
    calls.clear()
    imgs, labels, apply_fn, params = setup()
    sampled, logs = [], []
    cfg = TrainConfig(batch_size=8, num_steps=12, log_every=4, ckpt_every=12, sample_every=6, steps_per_execution=3)
    train(str(tmp_path / "s"), imgs, labels, apply_fn, params, Precond("edm"), LossConfig("edm"), cfg,
          sample_fn=lambda ema, step: sampled.append(step), log=logs.append)
    assert [c[:2] for c in calls] == [(0, 3), (3, 1), (4, 1), (5, 1), (6, 1), (7, 1), (8, 3), (11, 1)], calls
    assert sampled == [6, 12]
    assert "steps_per_execution=3 does not divide log_every=4:" in logs[0], logs
    with pytest.raises(ValueError, match="steps_per_execution must be >= 1"):
        TrainConfig(steps_per_execution=0)
