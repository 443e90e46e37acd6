"""Weight loading: official DiT checkpoints, diffusers folders, the local HF cache, and clear errors.

(That an official checkpoint computes the official forward: tests/graphs/test_official_dit.py.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle

import pytest
import torch
from official_dit import official_forward
from safetensors.torch import save_file

from ditcache.graphs import get_spec
from ditcache.graphs.weights import WeightsError, build_model, load_model, resolve_weights

BATCH = 3


# ---- helpers --------------------------------------------------------------------------------------
def source_model(spec, seed=0):
    """A random diffusers DiT whose blocks share one conditioning embedder, as the official model does."""
    torch.manual_seed(seed)
    model = build_model(spec)
    with torch.no_grad():
        # random init leaves zero-initialised (adaLN-zero) layers; make every tensor non-trivial so a
        # dropped or misplaced tensor changes the output
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
        shared = model.transformer_blocks[0].norm1.emb.state_dict()
        for block in model.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(shared)
    return model.eval()


def to_official(model) -> dict[str, torch.Tensor]:
    """The diffusers state dict of ``model`` under facebookresearch/DiT (models.py) key names."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    emb = "transformer_blocks.0.norm1.emb."
    out = {
        "x_embedder.proj.weight": sd["pos_embed.proj.weight"],
        "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
        "t_embedder.mlp.0.weight": sd[emb + "timestep_embedder.linear_1.weight"],
        "t_embedder.mlp.0.bias": sd[emb + "timestep_embedder.linear_1.bias"],
        "t_embedder.mlp.2.weight": sd[emb + "timestep_embedder.linear_2.weight"],
        "t_embedder.mlp.2.bias": sd[emb + "timestep_embedder.linear_2.bias"],
        "y_embedder.embedding_table.weight": sd[emb + "class_embedder.embedding_table.weight"],
        "final_layer.adaLN_modulation.1.weight": sd["proj_out_1.weight"],
        "final_layer.adaLN_modulation.1.bias": sd["proj_out_1.bias"],
        "final_layer.linear.weight": sd["proj_out_2.weight"],
        "final_layer.linear.bias": sd["proj_out_2.bias"],
        "pos_embed": model.pos_embed.pos_embed.detach().clone(),  # (1, T, D) fixed sin-cos table
    }
    for i in range(len(model.transformer_blocks)):
        d, o = f"transformer_blocks.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[o + f"adaLN_modulation.1.{kind}"] = sd[d + f"norm1.linear.{kind}"]
            out[o + f"attn.qkv.{kind}"] = torch.cat(
                [sd[d + f"attn1.to_{n}.{kind}"] for n in ("q", "k", "v")], dim=0
            )  # 3 x (D, D) -> (3D, D)
            out[o + f"attn.proj.{kind}"] = sd[d + f"attn1.to_out.0.{kind}"]
            out[o + f"mlp.fc1.{kind}"] = sd[d + f"ff.net.0.proj.{kind}"]
            out[o + f"mlp.fc2.{kind}"] = sd[d + f"ff.net.2.{kind}"]
    return out


def inputs(spec, seed=1):
    gen = torch.Generator().manual_seed(seed)
    size = spec.sample_size
    return (
        torch.randn(BATCH, spec.in_channels, size, size, generator=gen),
        torch.tensor([1.0, 500.0, 999.0]),
        torch.tensor([0, 7, spec.null_class]),
    )


def forward(model, x, t, y):
    with torch.no_grad():
        return model(x, timestep=t, class_labels=y).sample


def assert_same_model(loaded, reference, spec):
    x, t, y = inputs(spec)
    assert not loaded.training
    torch.testing.assert_close(forward(loaded, x, t, y), forward(reference, x, t, y), rtol=0, atol=0)


def assert_converted(loaded, reference, official, spec):
    """An official checkpoint loads exactly the reference's tensors, and computes the official forward."""
    want = reference.state_dict()
    assert not loaded.training
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, want[key], rtol=0, atol=0)
    x, t, y = inputs(spec)
    torch.testing.assert_close(forward(loaded, x, t, y), official_forward(official, x, t, y, heads=2))


def with_config(spec, **changes):
    return dataclasses.replace(spec, name=spec.name + "-modified", config={**spec.config, **changes})


@pytest.fixture(scope="module")
def src(tiny_spec):
    return source_model(tiny_spec)


@pytest.fixture(scope="module")
def folder(src, tmp_path_factory):
    path = tmp_path_factory.mktemp("diffusers") / "dit-tiny"
    src.save_pretrained(path)
    return path


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # keep the real ~/.cache/huggingface out of it
    return cache


# ---- official checkpoint ----------------------------------------------------------------------------
def test_helper_really_differs_from_diffusers_keys(src):
    official = to_official(src)
    assert "blocks.0.attn.qkv.weight" in official and official["blocks.0.attn.qkv.weight"].shape == (96, 32)
    assert not any(k.startswith("transformer_blocks") for k in official)


@pytest.mark.parametrize("wrap", ["bare", "ema", "model"])
def test_official_pt_loads_equal(src, tiny_spec, tmp_path, wrap):
    sd = to_official(src)
    # official training checkpoints hold {"model", "ema", "opt", "args"}; the released ones are bare
    obj = sd if wrap == "bare" else {wrap: sd, "args": {"note": "training checkpoint"}}
    file = tmp_path / "DiT-tiny.pt"
    torch.save(obj, file)
    model, info = load_model(tiny_spec, weights=file)
    assert_converted(model, src, sd, tiny_spec)
    assert info.source == str(file) and not info.random and info.format == "official-dit"


def test_official_training_checkpoint_with_args_namespace(src, tiny_spec, tmp_path):
    import argparse

    sd = to_official(src)
    file = tmp_path / "0400000.pt"  # what train.py writes: model, ema, opt, args
    torch.save({"model": sd, "ema": sd, "opt": {}, "args": argparse.Namespace(model="DiT-XL/2")}, file)
    model, _ = load_model(tiny_spec, weights=file)
    assert_converted(model, src, sd, tiny_spec)


def test_official_safetensors_loads_equal(src, tiny_spec, tmp_path):
    file = tmp_path / "official.safetensors"
    sd = to_official(src)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(file))
    model, info = load_model(tiny_spec, weights=str(file))
    assert_converted(model, src, sd, tiny_spec)
    assert info.format == "official-dit"


def test_official_without_pos_embed_loads_equal(src, tiny_spec, tmp_path):
    sd = to_official(src)
    file = tmp_path / "no_pos.pt"
    torch.save({k: v for k, v in sd.items() if k != "pos_embed"}, file)  # the table is fixed; diffusers rebuilds it
    model, _ = load_model(tiny_spec, weights=file)
    assert_converted(model, src, sd, tiny_spec)


def test_official_qkv_order_matters(src, tiny_spec, tmp_path):
    """A q/k swap in the fused qkv must change the output (the equality tests are not vacuous)."""
    sd = to_official(src)
    torch.save(sd, tmp_path / "right.pt")
    q, k, v = sd["blocks.1.attn.qkv.weight"].chunk(3)
    sd["blocks.1.attn.qkv.weight"] = torch.cat([k, q, v])
    file = tmp_path / "swapped.pt"
    torch.save(sd, file)
    model, _ = load_model(tiny_spec, weights=file)
    right, _ = load_model(tiny_spec, weights=tmp_path / "right.pt")
    x, t, y = inputs(tiny_spec)
    assert (forward(model, x, t, y) - forward(right, x, t, y)).abs().max() > 1e-4


# ---- diffusers folders --------------------------------------------------------------------------------
def test_diffusers_folder_loads_equal(src, tiny_spec, folder):
    model, info = load_model(tiny_spec, folder)
    assert_same_model(model, src, tiny_spec)
    assert info.source.endswith("diffusion_pytorch_model.safetensors") and info.format == "diffusers"


def test_pipeline_folder_loads_transformer(src, tiny_spec, tmp_path):
    src.save_pretrained(tmp_path / "pipe" / "transformer")
    (tmp_path / "pipe" / "model_index.json").write_text('{"_class_name": "DiTPipeline"}')
    model, info = load_model(tiny_spec, str(tmp_path / "pipe"))
    assert_same_model(model, src, tiny_spec)
    assert "transformer" in info.source


def test_diffusers_state_dict_file_loads_equal(src, tiny_spec, tmp_path):
    file = tmp_path / "weights.pt"
    torch.save(src.state_dict(), file)
    model, _ = load_model(tiny_spec, weights=file)
    assert_same_model(model, src, tiny_spec)


def test_folder_without_weights_says_what_to_give(tiny_spec, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(WeightsError, match="config.json"):
        load_model(tiny_spec, tmp_path)


# ---- local Hugging Face cache --------------------------------------------------------------------------------
def test_hf_cache_snapshot_is_found(src, empty_hf_cache):
    snapshot = empty_hf_cache / "models--facebook--DiT-XL-2-256" / "snapshots" / "abc"
    src.save_pretrained(snapshot / "transformer")
    # only resolution: dit-xl itself is 675M parameters
    assert resolve_weights(get_spec("dit-xl"), None) == snapshot
    # a snapshot of another repo is not taken for dit-xl-512's
    with pytest.raises(WeightsError):
        resolve_weights(get_spec("dit-xl-512"), None)


def test_hf_cache_snapshot_loads_as_pipeline_folder(src, tiny_spec, empty_hf_cache):
    snapshot = empty_hf_cache / "models--facebook--DiT-XL-2-256" / "snapshots" / "abc"
    src.save_pretrained(snapshot / "transformer")
    model, _ = load_model(tiny_spec, resolve_weights(get_spec("dit-xl"), None))
    assert_same_model(model, src, tiny_spec)


def test_no_weights_message_lists_the_options(empty_hf_cache):
    with pytest.raises(WeightsError) as err:
        load_model(get_spec("dit-xl"))
    message = str(err.value)
    for option in ("--weights", ".pt", "--random-weights", "facebook/DiT-XL-2-256"):
        assert option in message, f"{option!r} missing from: {message}"


# ---- mismatches --------------------------------------------------------------------------------------------------
def test_fewer_layers_names_unexpected_tensor(tiny_spec, folder):
    spec = with_config(tiny_spec, num_layers=3)
    with pytest.raises(WeightsError, match=r"unexpected tensor 'transformer_blocks\.3\.") as err:
        load_model(spec, folder)
    assert "--model" in str(err.value)


def test_more_layers_names_missing_tensor(tiny_spec, folder):
    spec = with_config(tiny_spec, num_layers=5)
    first_missing = next(k for k in build_model(spec).state_dict() if k.startswith("transformer_blocks.4."))
    with pytest.raises(WeightsError, match=rf"tensor '{first_missing}' .*is missing"):
        load_model(spec, folder)


def test_other_width_names_first_mismatching_tensor(tiny_spec, folder):
    spec = with_config(tiny_spec, attention_head_dim=8)  # width 16 instead of 32
    with pytest.raises(WeightsError) as err:
        load_model(spec, folder)
    message = str(err.value)
    assert "'pos_embed.proj.weight'" in message  # the first tensor in model order
    assert "(32, 4, 2, 2)" in message and "(16, 4, 2, 2)" in message


def test_official_checkpoint_of_other_depth(src, tiny_spec, tmp_path):
    file = tmp_path / "official.pt"
    torch.save(to_official(src), file)
    with pytest.raises(WeightsError, match=r"unexpected tensor 'transformer_blocks\.3\."):
        load_model(with_config(tiny_spec, num_layers=3), file)
    with pytest.raises(WeightsError, match=r"'transformer_blocks\.4\.norm1\.linear\.weight' .*is missing"):
        load_model(with_config(tiny_spec, num_layers=5), file)


def test_unknown_official_key_is_a_weights_error(src, tiny_spec, tmp_path):
    sd = to_official(src)
    sd["blocks.0.attn.q_norm.weight"] = torch.ones(16)
    file = tmp_path / "unknown.pt"
    torch.save(sd, file)
    with pytest.raises(WeightsError, match=r"'blocks\.0\.attn\.q_norm\.weight'"):
        load_model(tiny_spec, file)


def test_missing_tensor_is_named(src, tiny_spec, tmp_path):
    sd = src.state_dict()
    del sd["transformer_blocks.2.ff.net.2.bias"]
    file = tmp_path / "missing.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(file))
    with pytest.raises(WeightsError, match=r"'transformer_blocks\.2\.ff\.net\.2\.bias' \(shape \(32,\)\) is missing"):
        load_model(tiny_spec, file)


def test_unexpected_tensor_is_named(src, tiny_spec, tmp_path):
    sd = dict(src.state_dict())
    sd["extra.lora_A.weight"] = torch.zeros(2, 2)
    file = tmp_path / "extra.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(file))
    with pytest.raises(WeightsError, match=r"unexpected tensor 'extra\.lora_A\.weight' \(1 unexpected in all\)"):
        load_model(tiny_spec, file)


def test_nonexistent_path(tiny_spec, tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_model(tiny_spec, tmp_path / "nope.pt")


def test_random_and_explicit_weights_conflict(tiny_spec, folder):
    with pytest.raises(WeightsError, match="--weights or --random-weights"):
        load_model(tiny_spec, folder, random_weights=True)


# ---- provenance -----------------------------------------------------------------------------------------------
def test_sha256_is_the_file_hash(src, tiny_spec, tmp_path, folder):
    file = tmp_path / "official.pt"
    torch.save(to_official(src), file)
    _, info = load_model(tiny_spec, file)
    assert info.sha256 == hashlib.sha256(file.read_bytes()).hexdigest()
    _, info = load_model(tiny_spec, folder)
    expected = hashlib.sha256((folder / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()
    assert info.sha256 == expected and not info.random


def test_random_weights_flagged_and_seeded(tiny_spec):
    a, info_a = load_model(tiny_spec, random_weights=True, seed=3)
    b, info_b = load_model(tiny_spec, random_weights=True, seed=3)
    c, info_c = load_model(tiny_spec, random_weights=True, seed=4)
    assert info_a.random and info_c.random
    assert info_a == info_b and info_a.sha256 != info_c.sha256
    assert not a.training
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_folder_config_of_another_architecture_is_refused(tmp_path):
    import dataclasses

    spec = get_spec("dit-tiny")
    model, _ = load_model(spec, random_weights=True)
    model.save_pretrained(tmp_path / "w")
    other = dataclasses.replace(spec, config={**spec.config, "num_attention_heads": 4, "attention_head_dim": 8})
    with pytest.raises(WeightsError, match="num_attention_heads=2 but dit-tiny needs num_attention_heads=4"):
        load_model(other, tmp_path / "w")


# ---- files that are no weights -------------------------------------------------------------------------------
def _garbage(tmp_path, kind):
    """A file that is no state dict of tensors, and the words the error must use for what it holds."""
    file = tmp_path / ("bad.safetensors" if kind == "safetensors" else "bad.pt")
    if kind == "random bytes":
        file.write_bytes(bytes(range(7, 256)) * 4)
        return file, "no PyTorch, pickle or safetensors data"
    if kind == "empty":
        file.write_bytes(b"")
        return file, r"nothing \(the file is empty\)"
    if kind == "pickled list":
        file.write_bytes(pickle.dumps([1, 2, 3]))
        return file, "a plain Python pickle of a list"
    if kind == "list of tensors":
        torch.save([torch.zeros(2), torch.ones(2)], file)
        return file, "a list of 2 items"
    if kind == "whole module":
        torch.save(torch.nn.Linear(2, 2), file)
        return file, r"a pickled Python object \(torch\.nn\.modules\.linear\.Linear\).*state_dict\(\)"
    if kind == "dict of numbers":
        torch.save({"step": 3}, file)
        return file, "a dict whose entry 'step' is an int, not a tensor"
    if kind == "safetensors":
        file.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
        return file, "no safetensors data"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["random bytes", "empty", "pickled list", "list of tensors", "whole module",
                                  "dict of numbers", "safetensors"])
def test_garbage_weights_say_what_was_found_and_what_is_expected(tiny_spec, tmp_path, kind):
    file, found = _garbage(tmp_path, kind)
    with pytest.raises(WeightsError, match=rf"(?s)cannot read weights from {file}: .*the file holds {found}") as err:
        load_model(tiny_spec, file)
    message = str(err.value)
    assert "weights_only" not in message and "Traceback" not in message  # torch's advice is not ours to give
    for expected in ("official facebookresearch/DiT checkpoint", "diffusers model folder", ".safetensors"):
        assert expected in message, f"{expected!r} missing from: {message}"


def test_garbage_weights_of_a_unet_name_the_unet_formats(tmp_path):
    file, _ = _garbage(tmp_path, "random bytes")
    with pytest.raises(WeightsError, match="UNet2DConditionModel folder") as err:
        load_model(get_spec("unet-tiny"), file)
    assert "facebookresearch" not in str(err.value)
