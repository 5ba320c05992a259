"""Thin orbax wrapper: periodic saves with checksums, keep-last-k, resume from the newest good checkpoint.

Every save writes two items in one orbax step: the state and a CRC-32 of every array, so a checkpoint
counts as finished only with its checksums. On restore the arrays are checked against them; a
checkpoint that fails to restore or to verify (truncated, flipped bytes) is moved aside to
`<dir>_corrupt/` (never deleted, never overwritten) with a warning and the next older one is tried.
A record beside the directory (`<dir>_record.json`) remembers the newest finished step, so a
workdir whose checkpoints are all gone or damaged is refused instead of silently restarted.
"""
import errno
import json
import logging as logging_std
import os
import shutil
import sys
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


_DISK_FULL = ("RESOURCE_EXHAUSTED", "No space left on device")


class CheckpointError(RuntimeError):
    """No checkpoint restores, or a save failed; the message says what to do."""


def checksums(state):
    """{'path/to/leaf': 'crc32:shape:dtype'} of every array of a pytree (host copies)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        arr = np.ascontiguousarray(np.asarray(leaf))
        out[jax.tree_util.keystr(path)] = f"{zlib.crc32(arr.view(np.uint8).reshape(-1)):08x}:{arr.shape}:{arr.dtype}"
    return out


class Checkpointer:
    """Save/restore a pytree train state in `directory`, keeping the last `max_to_keep`."""

    def __init__(self, directory, max_to_keep=3):
        self.directory = os.path.abspath(directory)
        self.record_path = self.directory + "_record.json"
        self.max_to_keep = max_to_keep
        self._pending = None
        _quiet_orbax_leftovers()
        self._manager = self._new_manager()

    def _new_manager(self):
        opts = ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=True)
        handlers = {"state": ocp.StandardCheckpointHandler(), "checksums": ocp.JsonCheckpointHandler()}
        return ocp.CheckpointManager(self.directory, options=opts, item_handlers=handlers)

    def steps(self):
        """Steps with a finished checkpoint, ascending."""
        return sorted(self._manager.all_steps())

    def recorded_step(self):
        """Newest step this directory is recorded to have finished (0 if no record)."""
        if not os.path.exists(self.record_path):
            return 0
        with open(self.record_path) as f:
            return int(json.load(f).get("last_step", 0))

    def _write_record(self):
        steps = self.steps()
        if steps and steps[-1] > self.recorded_step() and jax.process_index() == 0:
            tmp = self.record_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"last_step": steps[-1], "directory": self.directory}, f)
            os.replace(tmp, self.record_path)

    def save(self, step, state, wait=True):
        """Start saving `state` as `step` (asynchronously); wait=True blocks until it is on disk."""
        self.wait()
        self._pending = int(step)
        try:
            self._manager.save(int(step), args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), checksums=ocp.args.JsonSave(checksums(state))))
        except (OSError, ValueError) as err:
            raise self._save_error(step, err) from None
        if wait:
            self.wait()

    def wait(self):
        """Block until a pending save is on disk, then record it."""
        try:
            self._manager.wait_until_finished()
        except (OSError, ValueError) as err:   # tensorstore reports a full disk as ValueError(RESOURCE_EXHAUSTED)
            raise self._save_error(self._pending, err) from None
        self._write_record()

    def _save_error(self, step, err):
        if getattr(err, "errno", None) == errno.ENOSPC or any(m in str(err) for m in _DISK_FULL):
            return CheckpointError(f"disk full while saving checkpoint {step} to {self.directory}: free space "
                                   f"there and rerun; the run resumes from its last finished checkpoint")
        return CheckpointError(f"saving checkpoint {step} to {self.directory} failed: {err}")

    def close(self):
        """Finish pending work and release orbax's threads (call on every path)."""
        try:
            self._manager.wait_until_finished()
        except Exception as err:   # noqa: BLE001 — closing must not mask the error that brought us here
            logging.warning("pending checkpoint save in %s failed: %s", self.directory, err)
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def restore_latest(self, like, allow_fresh=False):
        """(state, step) from the newest checkpoint that restores and verifies, shaped like `like`.

        (None, None) when there is none and none was recorded; a directory whose checkpoints are
        all damaged, or whose record shows a finished step but holds none, raises CheckpointError
        unless allow_fresh.
        """
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        steps = self.steps()
        failures = []
        for step in reversed(steps):
            self._check_structure(step, abstract)
            try:
                return self._restore_verified(step, abstract), step
            except Exception as err:   # orbax raises many types for damaged files
                failures.append(f"step {step}: {type(err).__name__}: {str(err)[:200]}")
                aside = self._move_aside(step)
                print(f"WARNING: checkpoint {step} in {self.directory} does not restore ({failures[-1][:120]}); "
                      f"moved to {aside}, trying an older one", flush=True)
        recorded = self.recorded_step()
        if (steps or recorded) and not allow_fresh:
            what = (f"no checkpoint in {self.directory} restores (failures: {'; '.join(failures)})" if steps else
                    f"{self.directory} holds no checkpoint, but this run had reached step {recorded} "
                    f"(record {self.record_path})")
            raise CheckpointError(f"{what}; refusing to start afresh over an earlier run. Damaged checkpoints "
                                  f"are kept in {self.directory}_corrupt/. To train from step 0 in this workdir "
                                  f"anyway, rerun with --fresh_start (earlier records are kept, renamed).")
        return None, None

    def _restore_verified(self, step, abstract):
        """Restore one step and check every array against its stored checksum."""
        if os.path.isdir(os.path.join(self.directory, str(step), "default")):   # written before checksums
            logging.warning("checkpoint %d has no checksums (older jaxrepro); restoring unverified", step)
            with ocp.StandardCheckpointer() as reader:
                return reader.restore(os.path.join(self.directory, str(step), "default"), abstract)
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), checksums=ocp.args.JsonRestore()))
        stored, got = out["checksums"], checksums(out["state"])
        bad = [k for k in got if stored.get(k) != got[k]] + [k for k in stored if k not in got]
        if bad:
            raise ValueError(f"checksum mismatch in {len(bad)} arrays (first: {', '.join(bad[:3])})")
        return out["state"]

    def _check_structure(self, step, abstract):
        """Refuse (without touching it) a readable checkpoint whose arrays do not match `like`."""
        try:
            meta = self._manager.item_metadata(step)["state"]
        except Exception:   # unreadable or older layout: let restore decide (and move it aside)
            return
        want, got = _shapes(abstract), _shapes(getattr(meta, "tree", meta))
        if got and want != got:
            diff = [f"{k}: checkpoint {got.get(k)} vs model {want.get(k)}"
                    for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]
            raise ValueError(f"checkpoint {step} in {self.directory} holds a different model or state "
                             f"({len(diff)} mismatches; first: {'; '.join(diff[:5])})")

    def _move_aside(self, step):
        """Move step's folder to <dir>_corrupt/<step>[.k] (a free name; nothing is overwritten)."""
        aside = self.directory + "_corrupt"
        os.makedirs(aside, exist_ok=True)
        dst, k = os.path.join(aside, str(step)), 1
        while os.path.exists(dst):
            dst, k = os.path.join(aside, f"{step}.{k}"), k + 1
        shutil.move(os.path.join(self.directory, str(step)), dst)
        self._manager.close()
        self._manager = self._new_manager()
        return dst


class _OrbaxLeftovers(logging_std.Filter):
    """Keeps orbax's failures to one line each: drops asyncio's "Task exception was never retrieved" for
    orbax reads that already failed, a full disk's repeated reports (CheckpointError says it once), and
    the tracebacks of orbax's other error records."""

    def filter(self, record):
        msg = record.getMessage()
        if msg.startswith("Task exception was never retrieved") and "orbax" in msg:
            return False
        if "orbax" in record.pathname and record.levelno >= logging_std.ERROR:
            if any(m in msg for m in _DISK_FULL):
                return False
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_orbax_leftovers():
    """Keep a damaged checkpoint's report to one line: after orbax gives up on it, each of its pending reads
    ends in an "Event loop is closed" callback error or an unretrieved task exception, hundreds of
    tracebacks in all. Only those are dropped; everything else passes through."""
    previous = sys.unraisablehook
    if getattr(previous, "jaxrepro_filter", False):
        return

    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value)):
            previous(unraisable)
    hook.jaxrepro_filter = True
    sys.unraisablehook = hook
    for name in ("asyncio", "absl"):
        logging_std.getLogger(name).addFilter(_OrbaxLeftovers())


def set_aside(path):
    """Rename a file or folder to a free `<path>.replaced[.k]` (kept, never deleted); returns the new name."""
    dst, k = path + ".replaced", 1
    while os.path.exists(dst):
        dst, k = f"{path}.replaced.{k}", k + 1
    os.replace(path, dst)
    return dst


def _shapes(tree):
    """{'a/b/c': shape} of a pytree of arrays or array metadata."""
    def name(k):
        return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(name(k) for k in path): tuple(getattr(x, "shape", ()) or ()) for path, x in leaves}
