"""Fine-tuning masks: which parameters train, selected by a regex over their '/'-joined paths."""
import re

import jax


def param_paths(params):
    """'/'-joined path of every parameter leaf, as a pytree of strings shaped like params."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path), params)


def trainable_mask(params, pattern):
    """Pytree of bools: True where the leaf's path matches `pattern` (re.search); "" marks every leaf."""
    return jax.tree_util.tree_map(lambda p: not pattern or re.search(pattern, p) is not None, param_paths(params))


def check_trainable(params, pattern):
    """Refuse a pattern that selects no parameter, listing some of the paths it could match."""
    if pattern and not any(jax.tree_util.tree_leaves(trainable_mask(params, pattern))):
        paths = jax.tree_util.tree_leaves(param_paths(params))
        raise ValueError(f"train.trainable={pattern!r} matches no parameter; paths look like {paths[:6]}")
