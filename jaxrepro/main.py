"""Entry point: python -m jaxrepro.main --config=configs/quickstart.py --workdir=DIR [--mode=all].

Modes: train | sample | compare | generate | info | all (train, then compare). Dispatch only; the
work lives in jaxrepro.run.
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

from jaxrepro import distributed, run

MODES = ("train", "sample", "compare", "generate", "info", "all")
_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file (file.py:arg allowed)")
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, records and figures")
_MODE = flags.DEFINE_enum("mode", "all", MODES, "what to run")
_COORD = flags.DEFINE_string("coordinator_address", None, "multi-host: host:port of process 0 "
                              "(jax.distributed.initialize; auto-detected on TPU pods and SLURM)")
_NPROC = flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
_PID = flags.DEFINE_integer("process_id", None, "multi-host: this process's index")
_FRESH = flags.DEFINE_bool("fresh_start", False, "train from step 0 in a workdir whose earlier run cannot be "
                           "resumed (its records are kept, renamed)")
# errors that describe bad input or a damaged run: one line, no traceback (--verbosity=1 shows it)
USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError, OSError, FloatingPointError)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:   # keep orbax's INFO lines out of the progress output
        logging.set_verbosity(logging.WARNING)
    config, mode = _CONFIG.value, _MODE.value
    if config is None and _WORKDIR.value and os.path.exists(os.path.join(_WORKDIR.value, "config.json")):
        config = run.load_workdir_config(_WORKDIR.value)     # a run made elsewhere, e.g. by python -m jaxrepro.interop
    if config is None:
        raise app.UsageError("--config is required (or a --workdir holding a config.json), "
                             "e.g. --config=configs/quickstart.py")
    if mode == "info":
        run.info(config)
        return
    if not _WORKDIR.value:
        raise app.UsageError(f"--workdir is required for --mode={mode}")
    try:
        distributed.initialize(_COORD.value, _NPROC.value, _PID.value)
        _dispatch(config, mode)
    except USER_ERRORS as err:
        if flags.FLAGS["verbosity"].present:
            raise
        raise SystemExit(f"error: {type(err).__name__}: {err}") from None


def _dispatch(config, mode):
    job = run.Job(config, _WORKDIR.value, writes=mode in ("train", "all"))
    if mode in ("train", "all"):
        job.train(fresh_start=_FRESH.value)
    if mode == "sample":
        job.sample()
    if mode in ("compare", "all"):
        job.compare()
    if mode == "generate":
        job.generate()


def parse_flags(argv):
    """absl's parser; an override of a key the config lacks becomes one clear error."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as err:
        overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
        hint = " ".join(str(err).replace("\\n", " ").replace("\\'", "").strip("'\"").split())
        raise SystemExit(f"error: an override names a key the config does not have ({hint}); "
                         f"overrides given: {', '.join(overrides)}") from None


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
