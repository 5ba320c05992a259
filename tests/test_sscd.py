"""SSCD in Flax against the same architecture in plain torch (random weights, the released names)."""
import collections
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from jaxrepro import metrics
from jaxrepro.descriptors import get_descriptor
from jaxrepro.descriptors.convert import convert_torchscript
from jaxrepro.descriptors.sscd import ARCHS, SSCD, load_variables, preprocess

OUT = (256, 512, 1024, 2048)


class GenericLayer(nn.Module):
    """Classy Vision's bottleneck: convolutional_block (0,1,3,4,6), bn, downsample, residual, ReLU."""

    def __init__(self, cin, cout, width, stride, groups):
        super().__init__()
        self.convolutional_block = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, cout, 1, bias=False))
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn(self.convolutional_block(x)) + residual)


class InitialBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self._module = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                     nn.MaxPool2d(3, 2, 1))

    def forward(self, x):
        return self._module(x)


class Backbone(nn.Module):
    def __init__(self, arch):
        super().__init__()
        self.initial_block = InitialBlock()
        stages, cin = [], 64
        for i, (depth, width) in enumerate(zip(arch.depths, arch.widths)):
            layers = collections.OrderedDict()
            for j in range(depth):
                layers[f"block{i}-{j}"] = GenericLayer(cin, OUT[i], width, 2 if (j == 0 and i > 0) else 1, arch.groups)
                cin = OUT[i]
            stages.append(nn.Sequential(layers))
        self.blocks = nn.Sequential(*stages)

    def forward(self, x):
        return self.blocks(self.initial_block(x))


class GeM(nn.Module):
    def forward(self, x):
        return x.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1.0 / 3)


class L2Norm(nn.Module):
    def forward(self, x):
        return nn.functional.normalize(x, dim=1)


class TorchSSCD(nn.Module):
    def __init__(self, arch):
        super().__init__()
        self.backbone = Backbone(arch)
        self.embeddings = nn.Sequential(GeM(), nn.Linear(2048, arch.dims), L2Norm())

    def forward(self, x):
        return self.embeddings(self.backbone(x))


def scripted(arch_name, path, seed=0):
    """Random weights and BN statistics (so that BN is not the identity), scripted and saved."""
    torch.manual_seed(seed)
    model = TorchSSCD(ARCHS[arch_name]).eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
            if isinstance(mod, nn.Conv2d):      # keep activations O(1) through 100 layers
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                mod.weight.mul_(0.5)
    torch.jit.script(model).save(path)
    return model


@pytest.mark.parametrize("arch_name,n_keys", [("sscd_disc_mixup", 320), ("sscd_disc_large", 626)])
def test_converted_trunk_and_embedding_match_torch(tmp_path, arch_name, n_keys):
    path = str(tmp_path / "model.pt")
    model = scripted(arch_name, path)
    assert len(torch.jit.load(path).state_dict()) == n_keys
    assert convert_torchscript(path, str(tmp_path / "ckpt")) == arch_name
    arch, variables = load_variables(str(tmp_path / "ckpt"))
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        t_in = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        t_feats = model.backbone(t_in).numpy().transpose(0, 2, 3, 1)
        t_emb = model(t_in).numpy()
    emb, feats = jax.jit(lambda v, x: SSCD(arch).apply(v, x))(variables, x)
    rel = lambda a, b: np.abs(np.asarray(a) - b).max() / np.abs(b).max()   # noqa: E731
    assert rel(feats, t_feats) <= 1e-4 and rel(emb, t_emb) <= 1e-4, (rel(feats, t_feats), rel(emb, t_emb))


def test_mismatched_file_is_refused_with_the_first_mismatches(tmp_path):
    path = str(tmp_path / "model.pt")
    torch.manual_seed(0)
    model = TorchSSCD(ARCHS["sscd_disc_mixup"])
    model.embeddings[1] = nn.Linear(2048, 256)                        # wrong projection size
    torch.jit.script(model.eval()).save(path)
    with pytest.raises(ValueError, match=r"shape of embeddings.1.weight"):
        convert_torchscript(path, str(tmp_path / "ckpt"))


def test_sscd_descriptor_in_metrics(tmp_path):
    path = str(tmp_path / "model.pt")
    scripted("sscd_disc_mixup", path)
    convert_torchscript(path, str(tmp_path / "ckpt"))
    desc = get_descriptor("sscd", checkpoint=str(tmp_path / "ckpt"), size=64)
    imgs = np.random.default_rng(1).uniform(-1, 1, (3, 8, 8, 1)).astype(np.float32)
    f = desc.embed(imgs)
    assert f.shape == (3, 512)
    np.testing.assert_allclose(jnp.linalg.norm(f, axis=1), 1, rtol=1e-5)
    assert metrics.rp_score(f, f, np.arange(3), np.arange(3), desc, 0.6) == 1.0


def test_missing_checkpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m jaxrepro.descriptors convert"):
        get_descriptor("sscd", checkpoint=str(tmp_path / "none"))


def test_preprocess_is_resize_then_imagenet_normalisation():
    x = np.full((1, 4, 4, 3), 1.0, np.float32)                        # white in [−1, 1]
    out = np.asarray(preprocess(x, size=8))
    assert out.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(out[0, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
                               rtol=1e-6)


def test_converter_expands_home_and_names_a_wrong_kind_of_file(tmp_path, monkeypatch):
    path = str(tmp_path / "model.pt")
    scripted("sscd_disc_mixup", path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    convert_torchscript(path, "~/sscd")                                   # as `--out=~/sscd` arrives
    assert os.path.exists(tmp_path / "home" / "sscd" / "sscd.npz") and not os.path.exists(tmp_path / "~")
    load_variables("~/sscd")
    torch.save(torch.jit.load(path).state_dict(), str(tmp_path / "state.pt"))    # a state dict, not TorchScript
    with pytest.raises(ValueError, match="is not a TorchScript file"):
        convert_torchscript(str(tmp_path / "state.pt"), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")
