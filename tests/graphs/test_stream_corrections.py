"""Per-stream scale/shift of the [text; image] families (FLUX.1, SD3), tiny sizes: a (2, D) table per range and
step, text row on the text tokens and image row on the image tokens, against diffusers' own forward with blocks
swapped (tests/graphs/stream_reference.py, which lays the rows out with a token mask of its own); SD3's last block
(no text stream out) reads nothing of its text row; old per-channel (D,) files load broadcast to both rows; files
of the wrong shape or rows are refused with the fix; single-stream families keep their per-channel shapes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from ditcache.compiler.runtime.build import build_dispatcher
from ditcache.graphs import get_spec, parse_schedule, parts_for
from ditcache.graphs.corrections import CorrectionsError, layout_metadata, load_corrections, range_correction_shapes
from ditcache.graphs.planning import plan_for
from ditcache.graphs.segments import channel_shape_at
from ditcache.graphs.streams import Streams, correction_shape_at, streams_of
from ditcache.graphs.weights import load_model

from stream_reference import FLUX, SD3, block_cache_reference, per_token, reference_step

CASES = {  # model -> (reference chain, recompute, steps); SD3's block 2 is its last, context_pre_only block
    "flux-tiny": (FLUX, {1: [0, 2], 2: [0]}, 3),
    "sd3-tiny": (SD3, {0: [0, 2], 2: [0, 3]}, 4),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def tiny(request):
    spec = get_spec(request.param)
    model, _ = load_model(spec, random_weights=True, seed=1)
    return spec, model, parts_for(model, spec)


def diffusers_call(spec, inputs):
    """The model as its pipeline calls it (FLUX: with its own txt_ids / img_ids)."""
    extras = spec.family_record.forward_extras(spec)

    def call(model):
        kwargs = {k: inputs[k] for k in ("encoder_hidden_states", "pooled_projections", "guidance") if k in inputs}
        return model(hidden_states=inputs["x"], timestep=inputs["timestep"], **extras, **kwargs).sample

    return call


def step_calls(spec, parts, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    inputs = [parts.example_inputs(2, gen) for _ in range(steps)]
    return inputs, [diffusers_call(spec, x) for x in inputs]


def per_stream_tables(recompute, steps, d, seed):
    """(steps, 2, D) scale/shift per cached block, text and image rows drawn apart (the text row's spread larger)."""
    gen = torch.Generator().manual_seed(seed)
    spread = torch.tensor([0.3, 0.1])[None, :, None]  # (1, 2, 1)
    scale = {i: 1 + spread * torch.randn(steps, 2, d, generator=gen) for i in recompute}
    shift = {i: spread * torch.randn(steps, 2, d, generator=gen) for i in recompute}
    return scale, shift


def save_tables(path, scale, shift, metadata=None):
    tensors = {f"scale.b{i}": t for i, t in scale.items()} | {f"shift.b{i}": t for i, t in shift.items()}
    save_file(tensors, str(path), metadata=metadata)
    return tensors


def corrected_plan(spec, tmp_path, recompute, steps, mode="offset", name="ss.safetensors"):
    return plan_for(parse_schedule({"kind": "block-cache", "steps": steps, "cache": mode, "recompute": recompute,
                                    "scale_shift": name}, base_dir=tmp_path), spec)


def run(plan, parts, inputs, corrections=None):
    dispatcher = build_dispatcher(plan, parts=parts, corrections=corrections)
    return [dispatcher(x) for x in inputs]


def test_two_stream_parts_declare_text_and_image(tiny):
    spec, _, parts = tiny
    streams = streams_of(parts)
    assert streams == Streams(("text", "image"), (spec.text_length, parts.image_tokens))
    assert sum(streams.tokens) == parts.tokens
    assert correction_shape_at(parts, 0) == (2, spec.hidden_size)
    table = torch.randn(2, spec.hidden_size)
    expanded = streams.expand(table)
    torch.testing.assert_close(expanded, per_token(table, spec.text_length, parts.tokens), rtol=0, atol=0)
    with pytest.raises(ValueError, match="has 2 rows"):
        streams.expand(torch.randn(spec.hidden_size))


@pytest.mark.parametrize("mode", ["offset", "output"])
def test_per_stream_scale_shift_matches_reference(tiny, tmp_path, mode):
    """Text row on the text tokens, image row on the image tokens, from a fit-correction-style file; the reference
    applies the rows through its own token mask. A shared table (the image row in both) gives other outputs."""
    spec, model, parts = tiny
    chain, recompute, steps = CASES[spec.name]
    scale, shift = per_stream_tables(recompute, steps, spec.hidden_size, seed=5)
    save_tables(tmp_path / "ss.safetensors", scale, shift, layout_metadata(streams_of(parts)))
    plan = corrected_plan(spec, tmp_path, recompute, steps, mode)
    inputs, calls = step_calls(spec, parts, steps, seed=6)
    got = run(plan, parts, inputs)
    token = {i: torch.stack([per_token(t[s], spec.text_length, parts.tokens) for s in range(steps)])
             for i, t in scale.items()}
    token_shift = {i: torch.stack([per_token(t[s], spec.text_length, parts.tokens) for s in range(steps)])
                   for i, t in shift.items()}
    want, _ = block_cache_reference(model, chain, calls, parts.num_blocks, recompute, mode, token, token_shift)
    plain, _ = block_cache_reference(model, chain, calls, parts.num_blocks, recompute, mode)
    shared = run(plan, parts, inputs, {**{f"scale.b{i}": t[:, 1:].expand_as(t) for i, t in scale.items()},
                                       **{f"shift.b{i}": t[:, 1:].expand_as(t) for i, t in shift.items()}})
    for s in range(steps):
        torch.testing.assert_close(got[s], want[s], msg=f"step {s}")
    replayed = [s for s in range(steps) if plan.steps[s].replay]
    for s in replayed:
        full, _ = reference_step(model, chain, calls[s], {})
        assert (got[s] - full).abs().max() > 1e-4, f"step {s}: a cached step equal to the full one proves nothing"
        assert (got[s] - plain[s]).abs().max() > 1e-4, f"step {s}: the correction must change replayed steps"
    assert max((got[s] - shared[s]).abs().max() for s in replayed) > 1e-4, "the text row must matter"


@pytest.mark.parametrize("mode", ["offset", "output"])
def test_sd3_last_block_text_row_changes_nothing(tmp_path, mode):
    """SD3's last block returns no text stream, its segment carries the text rows through, and the tail reads only
    the image tokens: the text row of a range ending there changes no output (bit for bit), its image row does."""
    spec = get_spec("sd3-tiny")
    model, _ = load_model(spec, random_weights=True, seed=1)
    parts = parts_for(model, spec)
    last, steps = parts.num_blocks - 1, 3
    recompute = {last: [0, 2], 0: [0, 1]}
    scale, shift = per_stream_tables(recompute, steps, spec.hidden_size, seed=7)
    tensors = save_tables(tmp_path / "ss.safetensors", scale, shift)
    plan = corrected_plan(spec, tmp_path, recompute, steps, mode)
    inputs, _ = step_calls(spec, parts, steps, seed=8)
    got = run(plan, parts, inputs, tensors)
    other_text = dict(tensors)
    for kind in ("scale", "shift"):
        table = tensors[f"{kind}.b{last}"].clone()
        table[:, 0] += 0.5
        other_text[f"{kind}.b{last}"] = table
    other_image = dict(tensors)
    table = tensors[f"scale.b{last}"].clone()
    table[:, 1] += 0.5
    other_image[f"scale.b{last}"] = table
    text_changed, image_changed = run(plan, parts, inputs, other_text), run(plan, parts, inputs, other_image)
    for s in range(steps):
        torch.testing.assert_close(text_changed[s], got[s], rtol=0, atol=0, msg=f"step {s}")
    assert (image_changed[1] - got[1]).abs().max() > 1e-4


def test_per_channel_file_broadcasts_to_both_streams(tiny, tmp_path):
    """An old (steps, D) file (no layout in its metadata) loads as (steps, 2, D) with both rows its own: the same
    outputs, bit for bit, as a per-stream file of two equal rows, and as the shared reference."""
    spec, model, parts = tiny
    chain, recompute, steps = CASES[spec.name]
    gen = torch.Generator().manual_seed(9)
    scale = {i: 1 + 0.1 * torch.randn(steps, spec.hidden_size, generator=gen) for i in recompute}
    shift = {i: 0.1 * torch.randn(steps, spec.hidden_size, generator=gen) for i in recompute}
    save_tables(tmp_path / "old.safetensors", scale, shift, {"model": spec.name})
    save_tables(tmp_path / "rows.safetensors", {i: t[:, None].expand(-1, 2, -1).contiguous() for i, t in scale.items()},
                {i: t[:, None].expand(-1, 2, -1).contiguous() for i, t in shift.items()},
                layout_metadata(streams_of(parts)))
    old = corrected_plan(spec, tmp_path, recompute, steps, name="old.safetensors")
    loaded = load_corrections(old.corrections, old, range_correction_shapes(parts, old), streams_of(parts))
    block = min(recompute)
    assert loaded[f"scale.b{block}"].shape == (steps, 2, spec.hidden_size)
    torch.testing.assert_close(loaded[f"scale.b{block}"][:, 0], scale[block], rtol=0, atol=0)
    torch.testing.assert_close(loaded[f"scale.b{block}"][:, 1], scale[block], rtol=0, atol=0)
    inputs, calls = step_calls(spec, parts, steps, seed=10)
    got = run(old, parts, inputs)
    rows = run(corrected_plan(spec, tmp_path, recompute, steps, name="rows.safetensors"), parts, inputs)
    want, _ = block_cache_reference(model, chain, calls, parts.num_blocks, recompute, "offset", scale, shift)
    for s in range(steps):
        torch.testing.assert_close(got[s], rows[s], rtol=0, atol=0, msg=f"step {s}")
        torch.testing.assert_close(got[s], want[s], msg=f"step {s}")


def test_wrong_tables_are_refused_with_the_fix(tmp_path):
    """A table of other rows or widths, a per-stream file whose tables have no rows, a file of other streams, and a
    per-stream file for a one-stream model: each refused naming expected vs found and fit-correction."""
    spec = get_spec("flux-tiny")
    model, _ = load_model(spec, random_weights=True, seed=1)
    parts = parts_for(model, spec)
    recompute, steps, d = {1: [0, 2]}, 3, spec.hidden_size
    (tmp_path / "ss.safetensors").write_bytes(b"")  # the schedule checks the file exists, the tests write it
    plan = corrected_plan(spec, tmp_path, recompute, steps)
    shapes, streams = range_correction_shapes(parts, plan), streams_of(parts)
    assert shapes == {"b1": (2, d)}

    def refused(shape, metadata, match):
        save_tables(tmp_path / "ss.safetensors", {1: torch.ones(shape)}, {1: torch.zeros(shape)}, metadata)
        with pytest.raises(CorrectionsError, match=match):
            load_corrections(tmp_path / "ss.safetensors", plan, shapes, streams)

    needs = rf"this plan needs \({steps}, 2, {d}\) \(steps, a row per stream: text, image, channels\)"
    fix = r".*ditcache fit-correction"
    refused((steps, 3, d), layout_metadata(streams), rf"has shape \({steps}, 3, {d}\), {needs}{fix}")
    refused((steps, 2, d + 1), None, rf"has shape \({steps}, 2, {d + 1}\), {needs}{fix}")
    refused((steps, d), layout_metadata(streams), rf"has shape \({steps}, {d}\), {needs}{fix}")  # says per stream
    refused((steps, 2, d), {"layout": "per-stream", "streams": "image,text"}, "rows are the streams image, text" + fix)

    dit = get_spec("dit-tiny")
    dit_model, _ = load_model(dit, random_weights=True, seed=0)
    dit_parts = parts_for(dit_model, dit)
    dit_plan = corrected_plan(dit, tmp_path, recompute, steps)
    width = dit.hidden_size
    save_tables(tmp_path / "ss.safetensors", {1: torch.ones(steps, 2, width)}, {1: torch.zeros(steps, 2, width)})
    with pytest.raises(CorrectionsError, match=rf"needs \({steps}, {width}\) \(steps, channels: per channel\)" + fix):
        load_corrections(tmp_path / "ss.safetensors", dit_plan, range_correction_shapes(dit_parts, dit_plan),
                         streams_of(dit_parts))


@pytest.mark.parametrize("name", ["dit-tiny", "pixart-tiny", "wan-tiny", "unet-tiny"])
def test_one_stream_families_keep_per_channel_shapes(name):
    spec = get_spec(name)
    model, _ = load_model(spec, random_weights=True, seed=0)
    parts = parts_for(model, spec)
    assert streams_of(parts) is None
    for block in range(parts.num_blocks):
        assert correction_shape_at(parts, block) == channel_shape_at(parts, block)
