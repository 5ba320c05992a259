"""Thin orbax wrapper: periodic saves, keep-last-k, resume from the newest checkpoint that restores.

A checkpoint that fails to restore (truncated, corrupt) is moved aside to `<dir>_corrupt/` with a
warning and the next older one is tried; if checkpoints exist but none restores, an error is
raised — never a silent fresh start. Saves that were interrupted (killed process) are left as
temporary folders that orbax does not list as steps.
"""
import os
import shutil

import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
    """Save/restore a pytree train state in `directory`, keeping the last `max_to_keep`."""

    def __init__(self, directory, max_to_keep=3):
        self.directory = os.path.abspath(directory)
        self.max_to_keep = max_to_keep
        self._manager = self._new_manager()

    def _new_manager(self):
        opts = ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=True)
        return ocp.CheckpointManager(self.directory, options=opts, item_handlers=ocp.StandardCheckpointHandler())

    def steps(self):
        """Steps with a finished checkpoint, ascending."""
        return sorted(self._manager.all_steps())

    def save(self, step, state, wait=True):
        """Start saving `state` as `step` (asynchronously); wait=True blocks until it is on disk."""
        self._manager.save(int(step), args=ocp.args.StandardSave(state))
        if wait:
            self._manager.wait_until_finished()

    def wait(self):
        self._manager.wait_until_finished()

    def restore_latest(self, like):
        """(state, step) from the newest checkpoint that restores into the structure of `like`; (None, None) if none exist."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        steps = self.steps()
        failures = []
        for step in reversed(steps):
            self._check_structure(step, abstract)
            try:
                return self._manager.restore(step, args=ocp.args.StandardRestore(abstract)), step
            except Exception as err:   # orbax raises many types for damaged files
                failures.append(f"step {step}: {type(err).__name__}: {str(err)[:200]}")
                self._move_aside(step)
                logging.warning("checkpoint %d in %s does not restore (%s); moved to %s_corrupt/ "
                                "and trying an older one", step, self.directory, failures[-1], self.directory)
                print(f"WARNING: checkpoint {step} does not restore; moved aside, trying an older one", flush=True)
        if steps:
            raise RuntimeError(f"no checkpoint in {self.directory} restores; refusing to start afresh over "
                               f"them. Failures: {'; '.join(failures)}")
        return None, None

    def _check_structure(self, step, abstract):
        """Refuse (without touching it) a readable checkpoint whose arrays do not match `like`."""
        try:
            meta = self._manager.item_metadata(step)
        except Exception:   # unreadable metadata: let restore decide (and move it aside)
            return
        want, got = _shapes(abstract), _shapes(getattr(meta, "tree", meta))
        if got and want != got:
            diff = [f"{k}: checkpoint {got.get(k)} vs model {want.get(k)}"
                    for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]
            raise ValueError(f"checkpoint {step} in {self.directory} holds a different model or state "
                             f"({len(diff)} mismatches; first: {'; '.join(diff[:5])})")

    def _move_aside(self, step):
        aside = self.directory + "_corrupt"
        os.makedirs(aside, exist_ok=True)
        src = os.path.join(self.directory, str(step))
        dst = os.path.join(aside, str(step))
        if os.path.exists(dst):
            shutil.rmtree(dst)
        shutil.move(src, dst)
        self._manager.close()
        self._manager = self._new_manager()


def _shapes(tree):
    """{'a/b/c': shape} of a pytree of arrays or array metadata."""
    def name(k):
        return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(name(k) for k in path): tuple(getattr(x, "shape", ()) or ()) for path, x in leaves}
