"""Two jax.distributed processes on this machine (CPU collectives, one device each) against one process
with two devices: training, sampling split over processes, the oracle sharded over both processes."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

from conftest import brute_force_denoiser

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "multihost_worker.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(out, workdir, env_extra=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **(env_extra or {}))
    env.pop("XLA_FLAGS", None)
    addr = f"127.0.0.1:{free_port()}"
    return [subprocess.Popen([sys.executable, WORKER, out, workdir, addr, str(i)], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]


def two_processes(out, workdir, env_extra=None):
    procs = start(out, workdir, env_extra)
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n----\n".join(log[-3000:] for log in logs)
    return logs


def one_process(out, workdir, env_extra=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               **(env_extra or {}))
    res = subprocess.run([sys.executable, WORKER, out, workdir], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]


def test_two_processes_equal_one_process_with_two_devices(tmp_path):
    for d in ("multi", "single"):
        (tmp_path / d).mkdir()
    two_steps = {"STEPS_PER_EXECUTION": "2"}        # steps 0–1 and 2–3 in one call each, batches [2, B, ...]
    logs = two_processes(str(tmp_path / "multi"), str(tmp_path / "multi" / "run"), two_steps)
    one_process(str(tmp_path / "single"), str(tmp_path / "single" / "run"), two_steps)
    multi, single = np.load(tmp_path / "multi" / "out.npz"), np.load(tmp_path / "single" / "out.npz")
    # Training (two optimiser steps per call; the restart test below runs one per call): the same 2-device program; each device holds the same 4 rows of every batch in both runs and
    # the cross-device gradient sum has two terms (a + b = b + a exactly), so parameters agree to float32
    # rounding of the collectives' implementations: allow 4 eps of each value after 4 Adam steps.
    for key in single.files:
        if key not in ("x_net", "x_orc", "sharded", "query"):
            np.testing.assert_allclose(multi[key], single[key], rtol=5e-7, atol=1e-8, err_msg=key)
    # Sampling: every seed's image depends on its seed only; the two processes sample 4 + 3 seeds (the last
    # share padded) where one process samples 7 at once — batch shapes differ, so allow float32 rounding of
    # 12 Heun-steps' matmuls (values O(1)): 1e-5.
    np.testing.assert_allclose(multi["x_net"], single["x_net"], atol=1e-5)
    np.testing.assert_allclose(multi["x_orc"], single["x_orc"], atol=1e-5)
    # The oracle sharded over both processes against a float64 brute force (its own test bound: 1e-4).
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (24, 4, 4, 1)).astype(np.float32)
    ref = brute_force_denoiser(multi["query"], 0.3, images[:23]).reshape(multi["sharded"].shape)
    np.testing.assert_allclose(multi["sharded"], ref, atol=1e-4)
    # process 0 alone wrote the records: one line per logged step
    recs = [json.loads(line)["step"] for line in open(tmp_path / "multi" / "run" / "metrics.jsonl")]
    assert recs == [2, 4], recs
    assert any("[1] done" in log for log in logs)


def test_one_process_killed_then_both_restart_from_the_last_finished_checkpoint(tmp_path):
    """Process 1 is SIGKILLed while the step-4 save is in flight; the job (process 0 too) is stopped, as a
    scheduler would; both restarted resume from step 2 or 4 and end equal to an uninterrupted run."""
    run = str(tmp_path / "run")
    procs = start(str(tmp_path), run, {"STEPS": "6", "KILL_PROCESS_1_AT": "4"})
    assert procs[1].wait(timeout=600) == -9
    procs[0].kill()
    procs[0].communicate(timeout=60)
    logs = two_processes(str(tmp_path), run, {"STEPS": "6"})
    assert all("resumed from checkpoint at step" in log for log in logs), logs[0][-2000:]
    resumed = np.load(tmp_path / "out.npz")
    (tmp_path / "ref").mkdir()
    two_processes(str(tmp_path / "ref"), str(tmp_path / "ref" / "run"), {"STEPS": "6"})
    ref = np.load(tmp_path / "ref" / "out.npz")
    for key in ref.files:
        np.testing.assert_array_equal(resumed[key], ref[key], err_msg=key)
