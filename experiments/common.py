"""Shared pieces of the experiments: ordinary run directories built through jaxrepro.run.Job, records, progress.

Every model an experiment trains is a normal run directory (config.json + checkpoints) that
`python -m jaxrepro.main --workdir=DIR --mode=compare` can reopen; rerunning an experiment resumes
(or skips) the runs it already has.
"""
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:          # `from configs import …` when run as `python experiments/NAME.py`
    sys.path.insert(0, ROOT)

from configs import quickstart  # noqa: E402
from jaxrepro.run import Job  # noqa: E402


def digits_config(n, **overrides):
    """The quickstart config (digits, MLP, EDM loss) at subset size n, with dotted overrides ('train.num_steps': 800)."""
    c = quickstart.get_config(f"n={n}")
    for key, value in overrides.items():
        *sections, name = key.split(".")
        node = c
        for s in sections:
            node = node[s]
        node[name] = value
    return c


def trained_job(config, workdir, log=print):
    """A Job whose model is trained in `workdir` (resumed, or left as it is when already done)."""
    job = Job(config, workdir, writes=True, log=log)
    job.train()
    return job


def write_results(out_dir, results, name="results.json"):
    """Write results as JSON atomically; returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.replace(path + ".tmp", path)
    return path


class Progress:
    """'[i/n] what … ETA' lines for long loops."""

    def __init__(self, total, log=print):
        self.total, self.done, self.t0, self.log = total, 0, time.time(), log

    def step(self, what):
        self.done += 1
        rate = (time.time() - self.t0) / self.done
        self.log(f"[{self.done}/{self.total}] {what}  ETA {rate * (self.total - self.done):.0f}s")
