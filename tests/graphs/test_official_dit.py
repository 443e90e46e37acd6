"""Official DiT checkpoints compute what the official model computes (its timestep embedding, its norms).

(a) against an independent reference written from the formulas (tests/graphs/official_dit.py);
(b) against facebookresearch/DiT's own models.py, when DITCACHE_OFFICIAL_DIT points to a local copy of it (its
    code is never committed here: the test copies it into a temporary folder).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from official_dit import official_forward, official_state, timestep_embedding, timestep_features

from ditcache.graphs import DiTParts, get_spec, load_model
from ditcache.graphs.convert_official import convert_official_state_dict, use_official_timestep_embedding

TIMESTEPS = torch.tensor([0.0, 1.0, 500.0, 999.0])
HEADS = 2  # dit-tiny: width 32, 2 heads, 4 blocks, patch 2, 8x8x4 latents, 1000 classes


@pytest.fixture(scope="module")
def spec():
    return get_spec("dit-tiny")


@pytest.fixture(scope="module")
def official(spec):
    """A random dit-tiny checkpoint in the official layout."""
    return official_state(depth=4, hidden=32, heads=HEADS, patch=2, in_channels=4, num_classes=1000, input_size=8)


@pytest.fixture(scope="module")
def official_file(official, tmp_path_factory):
    file = tmp_path_factory.mktemp("official") / "DiT-tiny.pt"
    torch.save(official, file)
    return file


@pytest.fixture(scope="module")
def loaded(spec, official_file):
    return load_model(spec, official_file)


def inputs(spec, batch: int = 4):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(batch, spec.in_channels, spec.sample_size, spec.sample_size, generator=gen)  # (B, 4, 8, 8)
    y = torch.tensor([0, 7, 999, spec.null_class])  # the null class (1000) included
    return x, TIMESTEPS, y


def test_reference_features_are_the_papers_formula():
    """cos/sin of t * 10000^(-i/128) for i < 128, checked entry by entry (shift 1 divides by 127 instead)."""
    t = torch.tensor([999.0])
    got = timestep_features(t)
    for i in (0, 1, 64, 127):
        w = 10000 ** (-i / 128)
        assert math.isclose(got[0, i].item(), math.cos(999 * w), abs_tol=1e-4)
        assert math.isclose(got[0, 128 + i].item(), math.sin(999 * w), abs_tol=1e-4)
    assert math.isclose(timestep_features(t, shift=1)[0, 127].item(), math.cos(999 * 10000 ** (-127 / 127)),
                        abs_tol=1e-4)


def test_official_checkpoint_gets_the_official_timestep_embedding(loaded, official):
    model, info = loaded
    assert info.format == "official-dit"
    for block in model.transformer_blocks:
        emb = block.norm1.emb
        torch.testing.assert_close(emb.time_proj(TIMESTEPS), timestep_features(TIMESTEPS))
        with torch.no_grad():
            torch.testing.assert_close(emb.timestep_embedder(emb.time_proj(TIMESTEPS)),
                                       timestep_embedding(official, TIMESTEPS))


def test_diffusers_folder_keeps_diffusers_embedding(spec, tmp_path):
    """A diffusers folder computes as diffusers' DiTPipeline does: frequencies divided by half - 1."""
    model, _ = load_model(spec, random_weights=True)
    model.save_pretrained(tmp_path / "w")
    again, info = load_model(spec, tmp_path / "w")
    assert info.format == "diffusers"
    torch.testing.assert_close(again.transformer_blocks[0].norm1.emb.time_proj(TIMESTEPS),
                               timestep_features(TIMESTEPS, shift=1))
    assert not torch.allclose(timestep_features(TIMESTEPS, shift=1), timestep_features(TIMESTEPS), atol=1e-3)


def test_official_forward_is_reproduced(loaded, official, spec):
    model, _ = loaded
    x, t, y = inputs(spec)
    with torch.no_grad():
        got = model(x, timestep=t, class_labels=y).sample  # (B, 8, 8, 8)
    torch.testing.assert_close(got, official_forward(official, x, t, y, HEADS))


def test_decomposition_of_an_official_checkpoint_is_the_official_forward(loaded, official, spec):
    model, _ = loaded
    parts = DiTParts(model, spec)
    x, t, y = inputs(spec)
    with torch.no_grad():
        h = parts.head()(x)
        h = parts.blocks(0, 2)(h, t, y)
        h = parts.blocks(2, 4)(h, t, y)
        got = parts.tail()(h, t, y)
    torch.testing.assert_close(got, official_forward(official, x, t, y, HEADS))


def _forward_error(official, spec, norm_eps: float, official_embedding: bool) -> float:
    """Max |output - official| of a diffusers DiT holding the converted tensors, built one way or the other."""
    model = spec.family_record.build_model({**spec.config, "norm_eps": norm_eps})
    if official_embedding:
        use_official_timestep_embedding(model)
    model.load_state_dict(convert_official_state_dict(official, spec.num_blocks), strict=False)
    x, t, y = inputs(spec)
    with torch.no_grad():
        return (model(x, timestep=t, class_labels=y).sample - official_forward(official, x, t, y, HEADS)).abs().max()


def test_both_differences_from_diffusers_matter(official, spec):
    """The same tensors in diffusers' own DiT compute something else; each of the two changes is needed."""
    fixed = _forward_error(official, spec, 1e-6, True)
    assert fixed < 2e-6
    assert _forward_error(official, spec, 1e-5, False) > 1e-3  # diffusers' DiT as it is
    assert _forward_error(official, spec, 1e-6, False) > 1e-3  # diffusers' timestep features (shift 1)
    assert _forward_error(official, spec, 1e-5, True) > 5 * fixed  # diffusers' MLP pre-norm eps


# ---- (b) against facebookresearch/DiT's models.py ---------------------------------------------------------------
# Minimal stand-ins for the three timm layers models.py imports (timm needs torchvision, which is not installed
# everywhere). Written for this test from timm's documented behaviour: same parameter names, same math.
TIMM_STANDINS = '''
import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, bias=True):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, bias=bias)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, T, D)


class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, **unused):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, Dh)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features=None, act_layer=nn.GELU, drop=0.0, **unused):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
'''


def _official_models_py() -> Path | None:
    given = os.environ.get("DITCACHE_OFFICIAL_DIT")
    if not given:
        return None
    path = Path(given)
    return path / "models.py" if path.is_dir() else path


def _timm_importable() -> bool:
    try:
        importlib.import_module("timm.models.vision_transformer")
        return True
    except Exception:  # not installed, or installed without torchvision
        return False


@pytest.fixture()
def official_module(tmp_path, monkeypatch):
    """facebookresearch/DiT's models.py, copied into a temporary folder and imported (timm stand-ins if needed)."""
    source = _official_models_py()
    if source is None:
        pytest.skip("set DITCACHE_OFFICIAL_DIT to a local copy of facebookresearch/DiT's models.py (or its folder)")
    if not source.is_file():
        pytest.fail(f"DITCACHE_OFFICIAL_DIT={source} is not a file")
    folder = tmp_path / "official"
    folder.mkdir()
    shutil.copyfile(source, folder / "dit_models.py")
    if not _timm_importable():
        for name in [n for n in sys.modules if n == "timm" or n.startswith("timm.")]:
            monkeypatch.delitem(sys.modules, name)
        package = folder / "timm" / "models"
        package.mkdir(parents=True)
        (folder / "timm" / "__init__.py").write_text("")
        (package / "__init__.py").write_text("")
        (package / "vision_transformer.py").write_text(TIMM_STANDINS)
    monkeypatch.syspath_prepend(str(folder))
    spec = importlib.util.spec_from_file_location("dit_models", folder / "dit_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_against_the_official_models_py(official_module, spec, tmp_path):
    torch.manual_seed(0)
    reference = official_module.DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=4,
                                    num_heads=HEADS, num_classes=1000, learn_sigma=True).eval()
    with torch.no_grad():  # the official init zeroes adaLN and the output layer: make every tensor count
        for name, p in reference.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn_like(p) * 0.1)
    file = tmp_path / "DiT-tiny.pt"
    torch.save(reference.state_dict(), file)
    model, info = load_model(spec, file)
    assert info.format == "official-dit"
    x, t, y = inputs(spec)
    with torch.no_grad():
        want = reference(x, t, y)  # (B, 8, 8, 8)
        torch.testing.assert_close(model(x, timestep=t, class_labels=y).sample, want)
        parts = DiTParts(model, spec)
        got = parts.tail()(parts.blocks(0, 4)(parts.head()(x), t, y), t, y)
        torch.testing.assert_close(got, want)
        # the test's own reference agrees with the official code too
        torch.testing.assert_close(official_forward(reference.state_dict(), x, t, y, HEADS), want)
