"""Entry point: python -m jaxrepro.main --config=configs/quickstart.py --workdir=DIR [--mode=all].

Modes: train | sample | compare | generate | info | all (train, then compare). Dispatch only; the
work lives in jaxrepro.run.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from jaxrepro import run

MODES = ("train", "sample", "compare", "generate", "info", "all")
_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file (file.py:arg allowed)")
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, records and figures")
_MODE = flags.DEFINE_enum("mode", "all", MODES, "what to run")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:   # keep orbax's INFO lines out of the progress output
        logging.set_verbosity(logging.WARNING)
    config, mode = _CONFIG.value, _MODE.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/quickstart.py")
    if mode == "info":
        run.info(config)
        return
    if not _WORKDIR.value:
        raise app.UsageError(f"--workdir is required for --mode={mode}")
    job = run.Job(config, _WORKDIR.value, writes=mode in ("train", "all"))
    if mode in ("train", "all"):
        job.train()
    if mode == "sample":
        job.sample()
    if mode in ("compare", "all"):
        job.compare()
    if mode == "generate":
        job.generate()


if __name__ == "__main__":
    app.run(main)
