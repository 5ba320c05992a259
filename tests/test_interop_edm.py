"""EDM network pickles: parity with EDM's own outputs, safe reading, refusals, and the import command end to end."""
import json
import os
import pickle
import subprocess
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrepro.data import save_npz
from jaxrepro.interop.edm import import_edm, map_parameters, read_settings
from jaxrepro.interop.pickle_reader import PickleRefused, RestrictedUnpickler, read_pickle
from jaxrepro.kernels import edm_sigmas
from jaxrepro.models import ModelApply, get_model
from jaxrepro.precond import Precond, make_denoiser, with_labels
from jaxrepro.samplers import sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures", "edm")
NETS = {"edm-cond-ddpmpp-c16": ("edm", 881_283), "vp-uncond-ddpmpp-c16": ("vp", 881_107)}
# Tolerance: a float32 forward pass is ~70 layers deep, each a sum of ≤ 9·C_in ≈ 600 products (or a
# softmax over 256 keys); a float32 sum of n terms errs by ~√n·ε ≈ 25 × 6e-8 ≈ 1.5e-6 relative (random
# rounding), and ~70 such layers add up to ~√70 × 1.5e-6 ≈ 1.3e-5. 1e-4 leaves a 7× margin for that and
# for the 35 Heun evaluations (the PF-ODE does not amplify errors of this size over 18 steps); EDM's
# reference is float64 inside (stored float32). Measured: ≤ 4e-7.
RTOL = 1e-4


def fixture(name):
    """A file of shared/fixtures/edm (beside the checkout, also in CI)."""
    return os.path.join(FIXTURES, name)


@pytest.fixture(scope="module")
def expected():
    with np.load(fixture("expected_outputs.npz")) as f:
        return {k: f[k] for k in f.files}


def rel_err(got, want):
    """max |got − want| / max |want| (got NHWC, want NCHW when 4-D)."""
    got = np.asarray(got, np.float64)
    got = got.transpose(0, 3, 1, 2) if got.ndim == 4 else got
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("name", list(NETS))
def test_denoiser_and_sampler_match_edm(name, expected):
    config, params, kind, info = import_edm(fixture(f"network-snapshot-{name}.pkl"))
    assert kind == NETS[name][0] and info["num_params"] == NETS[name][1] and info["image_shape"] == (32, 32, 3)
    model = get_model(config.pop("name"), **config)
    denoise = make_denoiser(ModelApply(model), params, kind)
    x = jnp.asarray(expected["x"].transpose(0, 2, 3, 1))                        # NCHW → NHWC
    sigma = jnp.asarray(expected["sigma"])
    labels = expected.get(f"{name}/class_idx")
    errs = {"D": rel_err(denoise(x, sigma, labels), expected[f"{name}/D"])}
    aug = jnp.asarray(expected[f"{name}/augment_labels"])
    d_aug = denoise.func(*denoise.args, x, sigma, labels, augment_labels=aug)   # Partial's bound params first
    errs["D_aug"] = rel_err(d_aug, expected[f"{name}/D_aug"])
    errs["round_sigma"] = rel_err(Precond(kind).round_sigma(sigma), expected[f"{name}/F_c_noise"])
    fn = denoise if labels is None else with_labels(denoise, labels)
    latents = jnp.asarray(expected["latents"].transpose(0, 2, 3, 1))
    errs["heun18"] = rel_err(sample(fn, latents, edm_sigmas(18), "heun"), expected[f"{name}/edm_sampler_heun18"])
    print(name, {k: f"{v:.2e}" for k, v in errs.items()})
    assert all(v <= RTOL for v in errs.values()), errs


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int64", "bfloat16"])
def test_tensors_rebuild_like_torch(dtype):
    """Storages parsed here (no torch.load) against torch's own values: dtypes, strides, offsets."""
    import torch
    base = torch.arange(60).to(getattr(torch, dtype)).reshape(5, 12)
    tensors = {"plain": base, "transposed": base.t(), "offset_view": base[1:4, 2:9:3],
               "param": torch.nn.Parameter(base.float()), "empty": base[:0]}
    import io
    got = RestrictedUnpickler(io.BytesIO(pickle.dumps(tensors, protocol=4))).load()
    for key, t in tensors.items():
        want = t.detach().float().numpy()
        assert got[key].shape == want.shape and np.array_equal(np.asarray(got[key], np.float32), want), key


def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)
    return str(path)


class _Call:
    """Pickles as a call of fn(*args) (what a hostile or foreign pickle does)."""
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("fn", [os.system, eval, exec, subprocess.call])
def test_callable_outside_allow_list_is_refused_and_never_runs(tmp_path, fn):
    side = tmp_path / "side_effect"
    code = f"open({str(side)!r}, 'w').close()"
    arg = f"touch {side}" if fn in (os.system,) else [f"touch {side}"] if fn is subprocess.call else code
    path = write_pickle(tmp_path / "evil.pkl", {"ema": _Call(fn, arg), "dataset_kwargs": {}})
    with pytest.raises(PickleRefused, match=fn.__name__) as err:
        import_edm(path)
    assert "refusing the global" in str(err.value)
    assert not side.exists()


def test_hostile_storage_bytes_and_object_arrays_are_refused(tmp_path):
    side = tmp_path / "side_effect"
    blob = b"".join(pickle.dumps(v, protocol=2) for v in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
    blob += pickle.dumps(_Call(os.system, f"touch {side}"), protocol=2)
    # torch.storage._load_from_bytes(blob), written opcode by opcode (torch need not be installed)
    path = tmp_path / "storage.pkl"
    path.write_bytes(b"\x80\x03ctorch.storage\n_load_from_bytes\n" + pickle.dumps((blob,), protocol=3)[2:-1] + b"R.")
    with pytest.raises(PickleRefused, match="torch storage bytes name the global posix.system"):
        read_pickle(str(path))
    with pytest.raises(PickleRefused, match="numpy dtype 'O8' is not allowed"):
        read_pickle(write_pickle(tmp_path / "objects.pkl", np.array([os.system, f"touch {side}"], dtype=object)))
    assert not side.exists()


@pytest.fixture
def fake_persistence(monkeypatch):
    """A stand-in torch_utils.persistence so that records of unknown classes can be pickled in the test."""
    def _reconstruct_persistent_obj(meta):
        raise AssertionError("never called by the reader")
    pkg, mod = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    _reconstruct_persistent_obj.__module__ = mod.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mod._reconstruct_persistent_obj, pkg.persistence = _reconstruct_persistent_obj, mod
    monkeypatch.setitem(sys.modules, "torch_utils", pkg)
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", mod)
    return lambda **meta: _Call(_reconstruct_persistent_obj, dict(type="class", version=6, **meta))


def test_unknown_edm_class_is_refused_and_its_source_never_runs(tmp_path, fake_persistence):
    side = tmp_path / "side_effect"
    src = f"open({str(side)!r}, 'w').close()\nclass Precond: pass\n"
    net = fake_persistence(module_src=src, class_name="Precond", state=dict(_init_kwargs={}, _modules={}))
    with pytest.raises(ValueError, match="unknown EDM network class 'Precond'.*EDMPrecond, VPPrecond"):
        import_edm(write_pickle(tmp_path / "edm2.pkl", {"ema": net}))
    assert not side.exists()
    newer = fake_persistence(module_src=src, class_name="EDMPrecond", state={})
    newer.args[0]["version"] = 7
    with pytest.raises(PickleRefused, match="persistence version 7"):
        import_edm(write_pickle(tmp_path / "v7.pkl", {"ema": newer}))
    assert not side.exists()


@pytest.mark.parametrize("obj,message", [
    ({"w": np.zeros(3)}, "not an EDM network snapshot"),
    ({"state": {0: {"step": 3}}, "param_groups": [{"lr": 1e-3, "params": [0]}]}, "keys \\['param_groups', 'state'\\]"),
    ([1, 2, 3], "the network is a list"),
])
def test_pickle_of_another_kind_is_refused(tmp_path, obj, message):
    with pytest.raises(ValueError, match=message):
        import_edm(write_pickle(tmp_path / "other.pkl", obj))


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_file_is_refused(tmp_path, cut):
    data = open(fixture("network-snapshot-vp-uncond-ddpmpp-c16.pkl"), "rb").read()
    path = tmp_path / "cut.pkl"
    path.write_bytes(data[:int(len(data) * cut)])
    with pytest.raises(PickleRefused, match="truncated"):
        import_edm(str(path))


def test_zip_archive_is_refused(tmp_path):
    import zipfile
    path = tmp_path / "state.pkl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"")
    with pytest.raises(PickleRefused, match="zip archive"):
        read_pickle(str(path))


@pytest.mark.parametrize("where,key,value,message", [
    ("net", "embedding_type", "fourier", "embedding_type='fourier'.*DDPM\\+\\+ only"),
    ("net", "encoder_type", "residual", "encoder_type='residual'"),
    ("net", "resample_filter", [1, 3, 3, 1], "resample_filter=\\[1, 3, 3, 1\\]"),
    ("net", "channel_mult_noise", 2, "channel_mult_noise=2"),
    ("net", "future_knob", 1, "unknown EDMPrecond/SongUNet settings \\['future_knob'\\]"),
    ("precond", "sigma_data", 0.6, "sigma_data=0.6 is not supported.*sigma_data=0.5"),
    ("precond", "sigma_max", 80.0, "sigma_max=80.0"),
    ("class", None, "DhariwalUNet", "network 'DhariwalUNet'.*supported: SongUNet"),
])
def test_settings_jaxrepro_lacks_are_refused(where, key, value, message):
    net = read_pickle(fixture("network-snapshot-edm-cond-ddpmpp-c16.pkl"))["ema"]
    if where == "class":
        net.modules["model"].class_name = value
    else:
        (net.modules["model"] if where == "net" else net).init_kwargs[key] = value
    with pytest.raises(ValueError, match=message):
        read_settings(net)


def test_vp_constants_other_than_jaxrepro_are_refused():
    net = read_pickle(fixture("network-snapshot-vp-uncond-ddpmpp-c16.pkl"))["ema"]
    net.init_kwargs["beta_d"] = 18.0
    with pytest.raises(ValueError, match="beta_d=18.0 is not supported.*beta_d=19.9"):
        read_settings(net)


def test_ve_and_iddpm_preconditionings_map():
    """The VP fixture relabelled as VEPrecond, and as iDDPMPrecond (2C output channels, its σ grid buffer u)."""
    from jaxrepro.kernels import iddpm_u
    net = read_pickle(fixture("network-snapshot-vp-uncond-ddpmpp-c16.pkl"))["ema"]
    net.class_name = "VEPrecond"
    assert read_settings(net)[0] == "ve"
    net.class_name = "iDDPMPrecond"
    unet = net.modules["model"]
    unet.init_kwargs["out_channels"] = 6
    conv = unet.modules["dec"].modules["32x32_aux_conv"].state["_parameters"]
    conv.update(weight=np.concatenate([conv["weight"]] * 2), bias=np.concatenate([conv["bias"]] * 2))
    net.state["_buffers"] = {"u": iddpm_u(1000, 0.001, 0.008).astype(np.float32)}
    kind, overrides, _, _ = read_settings(net)
    assert kind == "iddpm" and overrides["out_channels"] == 6
    model = get_model("ddpmpp_c64", **overrides)
    params = map_parameters(net, model, (32, 32, 3), kind)
    assert params["params"]["dec_aux_conv"]["kernel"].shape == (3, 3, 32, 6)
    net.state["_buffers"]["u"] = net.state["_buffers"]["u"] * 1.01
    with pytest.raises(ValueError, match="iDDPM σ grid differs"):
        map_parameters(net, model, (32, 32, 3), kind)


def test_missing_or_extra_tensors_are_listed():
    net = read_pickle(fixture("network-snapshot-vp-uncond-ddpmpp-c16.pkl"))["ema"]
    _, overrides, _, _ = read_settings(net)
    model = get_model("ddpmpp_c64", **overrides)
    unet = net.modules["model"]
    unet.modules["enc"].modules["16x16_block0"].modules["conv0"].state["_parameters"]["extra"] = np.zeros(3)
    qkv = unet.modules["enc"].modules["16x16_block1"].modules["qkv"].state["_parameters"]
    qkv["weight"] = qkv["weight"][:-3]                                   # [3C − 3, C, 1, 1]
    del unet.modules["map_layer0"].state["_parameters"]["bias"]
    with pytest.raises(ValueError, match="3 mismatches.*16x16_block1.qkv.weight: file float32\\[1, 1, 32, 93\\].*"
                                         "no tensor model.map_layer0.bias.*16x16_block0.conv0.extra"):
        map_parameters(net, model, (32, 32, 3), "vp")


def run_module(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_import_command_then_compare_end_to_end(tmp_path):
    data = str(tmp_path / "data.npz")
    images = np.random.default_rng(0).uniform(-1, 1, (16, 32, 32, 3)).astype(np.float32)
    save_npz(data, images, np.zeros(16, np.int32))
    wd = str(tmp_path / "run")
    src = fixture("network-snapshot-vp-uncond-ddpmpp-c16.pkl")
    out = run_module("jaxrepro.interop", src, f"--workdir={wd}", f"--data=npz:{data}", "--num_seeds=4")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "VPPrecond(SongUNet), 881,107 parameters, precond vp" in out.stdout
    assert f"--workdir={wd} --mode=compare" in out.stdout
    out = run_module("jaxrepro.main", f"--workdir={wd}", "--mode=compare")
    print(out.stdout)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "loaded EMA parameters" in out.stdout and "same-image rate" in out.stdout
    assert json.load(open(os.path.join(wd, "compare.json")))["num_seeds"] == 4
    # a workdir that holds a run is refused and left as it was; so is data of another image shape
    before = open(os.path.join(wd, "config.json")).read()
    again = run_module("jaxrepro.interop", src, f"--workdir={wd}", "--data=digits")
    assert again.returncode != 0 and "already holds a run" in again.stderr
    assert open(os.path.join(wd, "config.json")).read() == before
    other = run_module("jaxrepro.interop", src, f"--workdir={tmp_path / 'digits'}", "--data=digits")
    assert other.returncode != 0 and "(8, 8, 1)" in other.stderr
    assert not os.path.exists(tmp_path / "digits" / "config.json")
