"""The family registry: every registered size resolves to a record whose parts, costs and lookups work."""

from __future__ import annotations

import dataclasses
import re

import diffusers
import pytest
import torch

from ditcache.graphs import MODELS, costs_for, families, get_family, parts_for
from ditcache.graphs.registry import spec_for_config
from ditcache.graphs.segments import block_modules, link_of
from ditcache.graphs.weights import build_model

TINY = [name for name in MODELS if "tiny" in name]


@pytest.mark.parametrize("name", list(MODELS))
def test_every_size_resolves_to_its_family(name):
    spec = MODELS[name]
    record = spec.family_record
    assert families()[spec.family] is record and spec in record.models
    costs = costs_for(spec, batch=2)
    assert len(costs.blocks) == spec.num_blocks > 0 and min(costs.blocks) > 0 and costs.full > sum(costs.blocks)
    assert costs_for(spec, batch=4).full == 2 * costs.full
    # exactly one family recognises the size's config, and it maps back to the size (LCM shares its base's)
    assert [f.name for f in families().values() if f.recognises(spec.config)] == [spec.family]
    assert spec_for_config(dict(spec.config), spec.latent).config == spec.config


def test_every_family_has_a_tiny_size_and_real_diffusers_classes():
    for record in families().values():
        assert any("tiny" in s.name for s in record.models), f"{record.name} has no tiny size for tests"
        assert hasattr(diffusers, record.model_class) and hasattr(diffusers, record.stock.class_name)
        assert "--random-weights" in record.weights_help


@pytest.mark.parametrize("name", TINY)
def test_tiny_parts_chain_to_an_output(name):
    spec = MODELS[name]
    model = build_model(spec)
    assert type(model).__name__ == spec.family_record.model_class
    parts = parts_for(model, spec)
    assert isinstance(parts, spec.family_record.parts) and parts.num_blocks == spec.num_blocks
    assert len(block_modules(parts)) == spec.num_blocks
    inputs = parts.example_inputs(2, torch.Generator().manual_seed(0))
    env = dict(inputs)
    segments = [parts.head()]
    for i in range(spec.num_blocks):
        link = link_of(parts, i)
        segments += ([link] if link is not None else []) + [parts.blocks(i, i + 1)]
    segments.append(parts.tail())
    with torch.no_grad():
        for segment in segments:
            out = segment(*(env[n] for n in segment.inputs))
            env.update(zip(segment.outputs, out if isinstance(out, tuple) else (out,)))
    # each family's own tests compare the chain with the diffusers forward; here: it runs, and has its shape
    out, x = env[parts.output_name], inputs["x"]
    assert out.shape[0] == x.shape[0] and out.ndim == x.ndim and torch.isfinite(out).all()
    assert out.numel() * spec.in_channels == x.numel() * spec.out_channels


def test_an_unknown_family_is_refused_with_the_list():
    spec = dataclasses.replace(MODELS["dit-tiny"], family="hunyuan")
    assert ", ".join(families()).startswith("dit, pixart, unet")
    listed = re.escape(", ".join(families()))
    for call in (lambda: get_family("hunyuan"), lambda: spec.num_blocks, lambda: costs_for(spec),
                 lambda: parts_for(torch.nn.Identity(), spec)):
        with pytest.raises(ValueError, match=f"unknown model family 'hunyuan'; registered families: {listed}"):
            call()


def test_a_config_of_no_family_is_refused_with_the_list():
    config = {"_class_name": "HunyuanDiT2DModel", "num_layers": 40, "patch_size": 2, "in_channels": 4}
    with pytest.raises(ValueError, match=r"HunyuanDiT2DModel.*no registered family.*dit \(DiTTransformer2DModel\)"):
        spec_for_config(config)
