"""Official U-ViT state dicts → our UViT: same outputs as the official code (fixtures written by it)."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrepro import kernels
from jaxrepro.interop.uvit import (convert_state_dict, import_uvit, jaxrepro_model, read_state_dict,
                                   uvit_kwargs_from_state_dict)
from jaxrepro.models import ModelApply, get_model, init_params, param_count
from jaxrepro.models import uvit as uvit_module
from jaxrepro.precond import make_denoiser

# made by the official U-ViT code; shared/ lies beside the checkout (also in CI)
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "fixtures", "uvit")
NAMES = {"uvit-uncond-small": 283_744, "uvit-cond-mlptime-small": 317_600}
# Each output element is a chain of 5 blocks of sums over 64–256 products (plus 257-token softmax
# sums); float32 rounding (eps 1.2e-7) over O(10²–10³) terms bounds the relative error by ~1e-5–1e-4,
# on any x86 machine and any summation order. (Measured on CPU: ~1e-7 / 2e-7.)
REL_TOL = 1e-4


def _fixture(name):
    """(state dict, official kwargs) of one fixture network."""
    with open(os.path.join(FIXTURES, f"{name}.json")) as f:
        kwargs = json.load(f)
    return read_state_dict(os.path.join(FIXTURES, f"{name}.state_dict.npz")), kwargs


def _expected(name):
    """(x NHWC, timesteps, labels or None, official output NHWC) from expected_outputs.npz."""
    with np.load(os.path.join(FIXTURES, "expected_outputs.npz"), allow_pickle=False) as z:
        y = z[f"{name}/y"] if f"{name}/y" in z.files else None
        return z["x"].transpose(0, 2, 3, 1), z["timesteps"], y, z[f"{name}/out"].transpose(0, 2, 3, 1)


def _forward(kwargs, variables, x, timesteps, labels):
    """Our network on the official inputs; c_noise is the official `timesteps` argument."""
    overrides, _ = jaxrepro_model(kwargs)
    model = get_model("uvit_s2", **overrides)
    with jax.default_matmul_precision("highest"):       # no TF32/bf16 on accelerators
        out = model.apply(variables, jnp.asarray(x), jnp.asarray(timesteps),
                          None if labels is None else jnp.asarray(labels, jnp.int32))
    return np.asarray(out)


def _rel(ours, theirs):
    return float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))


@pytest.mark.parametrize("name", sorted(NAMES))
def test_fixture_network_matches_the_official_outputs(name):
    state, kwargs = _fixture(name)
    assert sum(v.size for v in state.values()) == NAMES[name]
    inferred = uvit_kwargs_from_state_dict(state, num_heads=kwargs["num_heads"])
    assert inferred == {**kwargs, "conv": True, "skip": True}
    overrides, shape = jaxrepro_model(kwargs)
    assert param_count(get_model("uvit_s2", **overrides), shape, conditional=kwargs["num_classes"] > 0) == NAMES[name]
    x, t, y, ref = _expected(name)
    rel = _rel(_forward(kwargs, convert_state_dict(state, kwargs), x, t, y), ref)
    print(f"{name}: relative error {rel:.2e}")
    assert rel <= REL_TOL


def test_uvit_s2_is_the_official_cifar10_model():
    assert param_count(get_model("uvit_s2"), (32, 32, 3)) == 44_255_328


def test_gelu_is_exact_and_layernorm_eps_is_torchs():
    """The end-to-end tolerance cannot tell these apart (~1e-6 effects): closed forms in float64."""
    x = np.linspace(-4, 4, 81).astype(np.float32)[None, :]                # [1, 81]
    mlp = uvit_module.Mlp(81)
    eye = {"kernel": jnp.eye(81), "bias": jnp.zeros(81)}
    out = np.asarray(mlp.apply({"params": {"fc1": eye, "fc2": eye}}, jnp.asarray(x)))
    exact = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x[0].astype(np.float64)])
    np.testing.assert_allclose(out[0], exact, atol=2e-6)                  # tanh form is off by up to ~5e-4
    z = np.array([[0.0, 2e-3, -2e-3, 1e-3]], np.float32)                  # variance ≈ eps: eps matters
    ln = uvit_module.LayerNorm()
    got = np.asarray(ln.apply(ln.init(jax.random.PRNGKey(0), z), z))
    z64 = z.astype(np.float64)
    want = (z64 - z64.mean()) / np.sqrt(z64.var() + 1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_bad_state_dicts_are_refused_naming_the_key():
    state, kwargs = _fixture("uvit-uncond-small")
    missing = {k: v for k, v in state.items() if k != "norm.weight"}
    with pytest.raises(ValueError, match="missing in file: norm/scale"):
        convert_state_dict(missing, kwargs)
    with pytest.raises(ValueError, match=r"unexpected key blocks\.0\.fc\.weight"):
        convert_state_dict({**state, "blocks.0.fc.weight": np.zeros((4, 4), np.float32)}, kwargs)
    bad = {**state, "mid_block.attn.qkv.weight": np.zeros((191, 64), np.float32)}
    with pytest.raises(ValueError, match=r"shape of mid_block\.attn\.qkv\.weight"):
        convert_state_dict(bad, kwargs)
    with pytest.raises(ValueError, match="img_size=64 contradicts"):
        uvit_kwargs_from_state_dict(state, num_heads=4, img_size=64)
    with pytest.raises(ValueError, match="num_heads=5"):
        uvit_kwargs_from_state_dict(state, num_heads=5)


def test_pth_round_trip_and_import_uvit(tmp_path):
    import torch
    name = "uvit-cond-mlptime-small"
    state, kwargs = _fixture(name)
    path = str(tmp_path / "nnet_ema.pth")
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    config, variables, kind = import_uvit(path, num_heads=kwargs["num_heads"])
    assert kind == "vp" and config["name"] == "uvit_s2" and config["num_classes"] == kwargs["num_classes"] - 1
    model = get_model(config.pop("name"), **config)
    like = jax.eval_shape(lambda: init_params(model, (32, 32, 3), 0, conditional=True))
    assert jax.tree_util.tree_structure(like) == jax.tree_util.tree_structure(variables)
    assert all(a.shape == b.shape for a, b in zip(jax.tree_util.tree_leaves(like), jax.tree_util.tree_leaves(variables)))
    x, t, y, ref = _expected(name)
    assert _rel(_forward(kwargs, variables, x, t, y), ref) <= REL_TOL
    with pytest.raises(ValueError, match="contradicts"):
        import_uvit(path, num_heads=4, image_size=64)


def test_checkpoints_needing_code_or_not_state_dicts_are_refused(tmp_path):
    import torch
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch '{marker}'",)

    evil = str(tmp_path / "evil.pth")
    torch.save({"norm.weight": torch.zeros(3), "payload": Evil()}, evil)
    with pytest.raises(ValueError, match="weights_only"):
        read_state_dict(evil)
    assert not marker.exists()
    wrapped = str(tmp_path / "wrapped.pth")
    torch.save({"model": {"norm.weight": torch.zeros(3)}}, wrapped)
    with pytest.raises(ValueError, match="not a state dict"):
        read_state_dict(wrapped)
    with pytest.raises(FileNotFoundError):
        read_state_dict(str(tmp_path / "absent.pth"))
    other = tmp_path / "x.ckpt"
    other.write_text("")
    with pytest.raises(ValueError, match="allowed: .pth"):
        read_state_dict(str(other))


@pytest.mark.parametrize("name", sorted(NAMES))
def test_vp_denoiser_is_x_minus_sigma_times_official_noise_prediction(name):
    """D(x; σ) = x − σ ε(x/√(σ²+1), 999 σ_VP⁻¹(σ)), at σ = σ_VP(t/999) for the fixture's timesteps t."""
    state, kwargs = _fixture(name)
    overrides, _ = jaxrepro_model(kwargs)
    model = get_model("uvit_s2", **overrides)
    x, t, y, eps = _expected(name)
    sigma = kernels.vp_sigma(t.astype(np.float64) / 999)                   # [B], so that c_noise = t
    x_in = x.astype(np.float64) * np.sqrt(sigma ** 2 + 1)[:, None, None, None]   # so that c_in x_in = x
    den = make_denoiser(ModelApply(model), convert_state_dict(state, kwargs), "vp")
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(den(jnp.asarray(x_in, jnp.float32), jnp.asarray(sigma, jnp.float32),
                              None if y is None else jnp.asarray(y, jnp.int32)))
    want = x_in - sigma[:, None, None, None] * eps
    # c_noise = 999 σ⁻¹(σ) re-derived in float32 shifts t by ≲ 1e-4 relative; the F error bound adds ~1e-4
    assert _rel(ours - x_in, want - x_in) <= 3 * REL_TOL


def test_import_command_writes_a_vp_run_that_compare_reopens(tmp_path):
    """`python -m jaxrepro.interop nnet.pth` (official U-ViT state dict) → a run; --mode=compare without --config."""
    import subprocess
    import sys

    import torch

    from jaxrepro.data import save_npz
    state, kwargs = _fixture("uvit-uncond-small")
    pth = str(tmp_path / "nnet_ema.pth")
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, pth)
    data = str(tmp_path / "data.npz")
    save_npz(data, np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32), np.zeros(8, np.int32))
    wd = str(tmp_path / "run")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def module(*args):
        return subprocess.run([sys.executable, "-m", *args], cwd=root, capture_output=True, text=True, timeout=600)
    out = module("jaxrepro.interop", pth, f"--workdir={wd}", f"--data=npz:{data}", "--num_seeds=3",
                 f"--num_heads={kwargs['num_heads']}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "283,744 parameters, precond vp" in out.stdout, out.stdout
    cfg = json.load(open(os.path.join(wd, "config.json")))
    assert cfg["precond"] == "vp" and cfg["model"]["name"] == "uvit_s2" and cfg["model"]["embed_dim"] == 64
    out = module("jaxrepro.main", f"--workdir={wd}", "--mode=compare")
    assert out.returncode == 0 and "same-image rate" in out.stdout, out.stderr[-3000:]
    assert json.load(open(os.path.join(wd, "compare.json")))["num_seeds"] == 3


def test_pair_rp_pairs_two_runs_by_seed(tmp_path):
    """experiments/pair_rp.py: identical samples → RP 1; a shifted copy of other seeds' images → refused / low."""
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
    from pair_rp import pair_rp

    from jaxrepro.data import save_npz
    from jaxrepro.descriptors import get_descriptor
    x = np.random.default_rng(0).uniform(-1, 1, (20, 8, 8, 1)).astype(np.float32)
    for name, images, seeds in [("a", x, np.arange(20)), ("b", x, np.arange(20)), ("c", np.roll(x, 1, 0), np.arange(20)),
                                ("d", x, np.arange(1, 21))]:
        os.makedirs(tmp_path / name)
        save_npz(str(tmp_path / name / "samples.npz"), images, np.zeros(20, np.int32), seeds=seeds)
    desc = get_descriptor("pixel_l2")
    assert pair_rp(str(tmp_path / "a"), str(tmp_path / "b"), desc)["rp"] == 1.0
    assert pair_rp(str(tmp_path / "a"), str(tmp_path / "c"), desc)["rp"] == 0.0   # independent uniform images
    with pytest.raises(ValueError, match="seeds differ"):
        pair_rp(str(tmp_path / "a"), str(tmp_path / "d"), desc)
