import jax
import jax.numpy as jnp
import numpy as np

from jaxrepro import augment
from jaxrepro.models import ModelApply, get_model, init_params


def image(rng, h=8, w=8):
    return jnp.asarray(rng.uniform(-1, 1, (h, w, 3)).astype(np.float32))


def test_probability_zero_is_the_identity(rng):
    x = image(rng)
    for s in range(5):
        out, lab = augment.augment(jax.random.PRNGKey(s), x, 0.0)
        np.testing.assert_array_equal(out, x)
        np.testing.assert_array_equal(lab, np.zeros(9))


def test_quarter_turn_and_half_shift_are_exact(rng):
    x = image(rng)
    rot = augment.warp(x, augment._rot(jnp.pi / 2))      # pixel centres map onto pixel centres
    # float32 cos(π/2) = −4.4e-8 and the rounding of the source coordinates (|·| ≤ 3.5, ulp 2.4e-7) put each
    # sample ≤ 4e-7 px off a pixel centre; bilinear weights then mix in ≤ 4e-7 × (neighbour difference ≤ 2),
    # plus a few roundings of |x| ≤ 1: ≤ 1.5e-6 (observed 4.8e-7); atol 1e-5
    np.testing.assert_allclose(rot, jnp.rot90(x, k=1, axes=(0, 1)), atol=1e-5)
    shifted = augment.warp(x, augment._translate(-2.0, 0.0))  # output x samples input x − 2
    # integer shift: source coordinates are exact, bilinear weights exactly 0/1 → exact up to ≤ 2 roundings of
    # |x| ≤ 1 (observed bitwise); 1e-6 ≈ 8 ulps
    np.testing.assert_allclose(shifted[:, 2:], x[:, :-2], atol=1e-6)


def test_labels_describe_the_transform(rng):
    x = image(rng)
    outs = [augment.augment(jax.random.PRNGKey(s), x, 1.0) for s in range(40)]
    for out, lab in outs:
        assert lab.shape == (9,) and bool(jnp.all(jnp.isfinite(out)))
        if lab[0] == 1 and bool(jnp.all(lab[1:] == 0)):
            np.testing.assert_array_equal(out, x[:, ::-1])
    labs = np.stack([np.asarray(lab) for _, lab in outs])
    assert 0.2 < labs[:, 0].mean() < 0.8       # x-flip is a coin flip: 40 fixed seeds, SE 0.079, ±0.3 = 3.8 SE
    assert np.all(np.abs(labs[:, 3:5]).sum(1) > 0)          # every p=1 sample is rotated
    assert np.all(np.abs(labs[:, 2]) > 0)                   # and scaled


def test_augment_labels_reach_the_network():
    model = get_model("ddpmpp_tiny", augment_dim=9)
    params = init_params(model, (8, 8, 3), 0)
    assert params["params"]["map_augment"]["kernel"].shape == (9, 16)
    leaves, tree = jax.tree_util.tree_flatten(params)          # away from the near-zero output init
    keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
    params = jax.tree_util.tree_unflatten(tree, [0.3 * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)])
    x = jnp.ones((1, 8, 8, 3))
    f = jax.jit(lambda aug: ModelApply(model)(params, x, jnp.zeros(1), augment_labels=aug))
    a, b = f(jnp.zeros((1, 9))), f(jnp.ones((1, 9)))
    # the labels' effect is O(1) relative with these O(0.3) weights (observed 0.26); 1e-3 ≫ float32 noise (~1e-6)
    assert float(jnp.abs(a - b).max()) > 1e-3 * float(jnp.abs(a).max())
