import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrepro import kernels, samplers
from jaxrepro.models import PRESETS, ModelApply, get_model, init_params, param_count
from jaxrepro.precond import KINDS, classifier_free_guidance, make_denoiser, with_labels

SMALL = ["ddpmpp_tiny", "uvit_tiny", "mlp_tiny"]


@pytest.mark.parametrize("name,expected", [("ddpmpp_c64", 13_956_931), ("ddpmpp_c128", 55_733_891),
                                           ("ddpmpp_c256", 222_747_907)])
def test_ddpmpp_parameter_counts_equal_edm(name, expected):
    assert param_count(get_model(name), (32, 32, 3)) == expected


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_output_shape_and_dtype_of_every_preset(name):
    model = get_model(name)
    shape = (8, 8, 3) if name.startswith("mlp") else (32, 32, 3)
    params = jax.eval_shape(lambda: init_params(model, shape, 0))
    out = jax.eval_shape(lambda p, x, c: model.apply(p, x, c), params,
                         jax.ShapeDtypeStruct((2, *shape), jnp.float32), jax.ShapeDtypeStruct((2,), jnp.float32))
    assert out.shape == (2, *shape) and out.dtype == jnp.float32


# iDDPM needs a 2C-channel head, which DDPM++ offers (out_channels)
COMBOS = [(n, k) for n in SMALL for k in KINDS if k != "iddpm" or n.startswith("ddpmpp")]


@pytest.mark.parametrize("name,kind", COMBOS)
def test_denoiser_is_finite_over_the_sigma_range(name, kind):
    model = get_model(name, **({"out_channels": 6} if kind == "iddpm" else {}))
    shape = (16, 16, 3)
    params = init_params(model, shape, 0)
    den = jax.jit(make_denoiser(ModelApply(model), params, kind))
    x = jax.random.normal(jax.random.PRNGKey(1), (4, *shape))
    for sigma in [0.002, 0.1, 1.0, 10.0, 80.0]:
        out = den(x * sigma, sigma)
        assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out))), (sigma, kind)


def test_classifier_free_guidance_combinator():
    model = get_model("uvit_tiny", num_classes=10)
    params = init_params(model, (8, 8, 3), 0, conditional=True)
    den = make_denoiser(ModelApply(model), params, "edm")
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3))
    labels = jnp.array([0, 3, 3, 9])
    cond = jax.jit(den)(x, 1.3, labels)
    uncond = jax.jit(den)(x, 1.3, jnp.full(4, 10))
    assert float(jnp.abs(cond - uncond).max()) > 1e-4       # labels matter (by 3.7e-3 at this fixed init)

    def guided(lab, w):
        return jax.jit(classifier_free_guidance(den, lab, w, 10))(x, 1.3)
    # The guided program evaluates the same float32 network as `cond`/`uncond` but is compiled separately, so
    # fusion/FMA choices may round differently: at most the network's forward error, ≈ 12 chained matmuls of
    # fan-in ≤ 128 → ≤ 12·128·u ≈ 9e-5 relative, × max|D| ≈ 0.53 → 5e-5 (observed: bitwise equal). A wrong
    # weight or null label errs by ~w·|cond − uncond| ≈ 3.7e-3·w, ≫ 5e-5.
    atol = 5e-5
    np.testing.assert_allclose(guided(labels, 0.0), cond, atol=atol)
    np.testing.assert_allclose(guided(jnp.full(4, 10), 2.5), uncond, atol=atol)
    np.testing.assert_allclose(guided(labels, 1.0), 2 * cond - uncond, atol=atol)
    # guided and label-bound denoisers drive the sampler like any D(x, σ)
    lat = samplers.latents_from_seeds(np.arange(4), (8, 8, 3))
    out = samplers.sample(classifier_free_guidance(den, labels, 0.5, 10), lat, kernels.edm_sigmas(3))
    ref = samplers.sample(with_labels(den, labels), lat, kernels.edm_sigmas(3))
    assert out.shape == lat.shape and float(jnp.abs(out - ref).max()) > 0


@pytest.mark.parametrize("name", SMALL)
def test_label_dropout_one_means_unconditional(name):
    model = get_model(name, num_classes=5, label_dropout=1.0)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 3))
    params = init_params(model, (8, 8, 3), 0, conditional=True)
    c = jnp.array([0.1, 0.5, -0.3])
    rngs = {"dropout": jax.random.PRNGKey(3)}
    apply = jax.jit(lambda lab: model.apply(params, x, c, lab, True, rngs=rngs))
    dropped, null = apply(jnp.array([1, 2, 3])), apply(jnp.array([5, 5, 5]))
    # one compiled program, identical inputs once every label is dropped to null: bitwise equal (XLA on one
    # machine is deterministic); 1e-6 is a few ulps of |out| ≤ 1.4
    np.testing.assert_allclose(dropped, null, atol=1e-6)


def test_bad_model_input_is_refused():
    with pytest.raises(ValueError, match="allowed: ddpmpp_c128"):
        get_model("resnet")
    with pytest.raises(ValueError, match="no setting"):
        get_model("mlp", channels=3)
    model = get_model("ddpmpp_tiny")
    params = init_params(model, (16, 16, 3), 0)
    with pytest.raises(ValueError, match="square images"):
        model.apply(params, jnp.zeros((1, 15, 15, 3)), jnp.zeros(1))
    with pytest.raises(ValueError, match="unconditional"):
        model.apply(params, jnp.zeros((1, 16, 16, 3)), jnp.zeros(1), jnp.zeros(1, jnp.int32))
    with pytest.raises(ValueError, match="patch size"):
        um = get_model("uvit_tiny")
        um.init(jax.random.PRNGKey(0), jnp.zeros((1, 7, 7, 3)), jnp.zeros(1))


def test_dropout_mask_of_an_example_does_not_depend_on_its_batch():
    """With example_ids, example j's dropout and label-dropout draws depend only on (layer key, id j): the
    same example in another batch, at another row, gives the bit-identical output; without ids they differ."""
    model = get_model("mlp_tiny", dropout=0.5, num_classes=3, label_dropout=0.5)
    params = init_params(model, (4, 4, 1), 0)
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 4, 4, 1))
    c, labels, ids = jnp.linspace(-1, 1, 8), jnp.arange(8) % 3, jnp.arange(100, 108)
    rngs = {"dropout": jax.random.PRNGKey(2)}
    run = lambda rows, with_ids: model.apply(params, x[rows], c[rows], labels[rows], True,   # noqa: E731
                                             example_ids=ids[rows] if with_ids else None, rngs=rngs)
    full, part = run(np.arange(8), True), run(np.array([5, 2]), True)
    np.testing.assert_array_equal(np.asarray(part), np.asarray(full)[[5, 2]])
    full, part = run(np.arange(8), False), run(np.array([5, 2]), False)
    assert not np.allclose(np.asarray(part), np.asarray(full)[[5, 2]])


def test_ddpmpp_in_bfloat16_runs_every_convolution_in_bfloat16():
    """Mixed precision means bfloat16 activations throughout: no float64 NumPy constant (skip scale, attention
    scale) or float32 embedding may promote a block back to float32 (EDM casts the affine to x's dtype)."""
    model = get_model("ddpmpp_tiny")
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), init_params(model, (32, 32, 3), 0))
    x = jnp.ones((2, 32, 32, 3), jnp.bfloat16)
    jaxpr = str(jax.make_jaxpr(lambda p, x: model.apply(p, x, jnp.ones(2, jnp.bfloat16)))(params, x))
    conv_out = re.findall(r"(\w+)\[[\d,]+\] = conv_general_dilated", jaxpr)
    assert len(conv_out) > 10 and set(conv_out) == {"bf16"}


def test_up_block_skip_is_the_1x1_conv_of_the_upsampled_input():
    """UNetBlock(up=True) runs its 1×1 skip at the input resolution and upsamples after (nearest-neighbour
    upsampling commutes with a per-pixel affine map); the result must be EDM's order — upsample, then the
    1×1 conv and its bias — computed here in float64, in the CPU and the plain forms. With conv1 zeroed the
    block's output is skip(up(x))·√½."""
    from jaxrepro.models import fast_layers
    from jaxrepro.models.ddpmpp import SKIP_SCALE, UNetBlock
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 8)).astype(np.float32)
    emb = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    block = UNetBlock(12, up=True)
    params = block.init(jax.random.PRNGKey(0), x, emb)
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.zeros_like(v) if "conv1" in jax.tree_util.keystr(path) else v, params)
    params["params"]["skip"]["bias"] = jnp.linspace(-3, 3, 12)                     # initialised to zeros
    w = np.asarray(params["params"]["skip"]["kernel"], np.float64)[0, 0]          # [8, 12]
    b = np.asarray(params["params"]["skip"]["bias"], np.float64)
    up = np.repeat(np.repeat(x.astype(np.float64), 2, axis=1), 2, axis=2)            # [2, 8, 8, 8]
    ref = (up @ w + b) * SKIP_SCALE
    # 8-term float32 dot products plus the bias, then ×√½: ≤ 10 roundings of values ≤ the sum of |terms|
    bound = 10 * 2.0 ** -24 * (8 * np.abs(x).max() * np.abs(w).max() + np.abs(b).max())
    for cpu in (True, False):
        with fast_layers.forms(cpu):
            out = np.asarray(block.apply(params, x, emb), np.float64)
        assert out.shape == ref.shape == (2, 8, 8, 12)
        np.testing.assert_allclose(out, ref, rtol=0, atol=bound)
