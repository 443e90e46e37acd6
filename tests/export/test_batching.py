"""Any batch from one export: a request of any size runs in chunks of the engines' batch, and its images do not
depend on how it was split (compiler/runtime/chunking.py through load_engines' dispatcher)."""

from __future__ import annotations

import pytest
import torch

from ditcache.compiler.runtime.chunking import chunked
from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
from ditcache.compiler.runtime.sampling import SampleRequest
from ditcache.export.export_engines import ExportRequest, export_engines
from ditcache.export.load import load_engines
from ditcache.export.manifest import ManifestError

DELTA = "kind: delta-dit\nsteps: 6\nboundary: 3\ninterval: 2\ncached_blocks: 2\n"


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """Eager engine directories of dit-tiny's Δ-DiT plan exported for 1, 2 and 4 images per call."""
    root = tmp_path_factory.mktemp("batching")
    schedule = root / "delta.yaml"
    schedule.write_text(DELTA)
    out = {}
    for images in (1, 2, 4):
        out[images] = root / f"eng{images}"
        export_engines(ExportRequest(model="dit-tiny", schedule=schedule, out=out[images], backend="eager",
                                     random_weights=True, batch_size=images), log=lambda m: None, progress=False)
    return out


def _sample(directory, labels, **kw):
    loaded = load_engines(directory, images=len(labels))
    return sample_with_plan(loaded.dispatcher, loaded.spec, SampleRequest(tuple(labels), steps=6, seed=5, **kw))


def test_three_images_do_not_depend_on_the_engine_batch(engines, tiny_model, tiny_spec):
    labels = (3, 7, 11)
    got = {images: _sample(path, labels) for images, path in engines.items()}
    # independent reference: the eager runtime at the request's own batch, no chunking
    loaded = load_engines(engines[1])
    want = sample_with_plan(eager_dispatcher(tiny_model, tiny_spec, loaded.plan), tiny_spec,
                            SampleRequest(labels, steps=6, seed=5))
    for images, latents in got.items():
        assert latents.shape == (3, tiny_spec.in_channels, tiny_spec.sample_size, tiny_spec.sample_size)
        # Rows are computed independently; only the kernels' blocking depends on the batch: the stock model's
        # forward differs by ~5e-7 between batches of 2 and 6 rows, which 6 guided steps grow to <= ~1e-4 (on the
        # machine this was written on, the batch-2 and batch-4 engines gave bitwise the batch-6 latents).
        torch.testing.assert_close(latents, want, rtol=0, atol=3e-4, msg=f"batch-{images} engines")
    # and the Δ-DiT plan really caches: its images differ from the full model's
    full = sample_with_plan(eager_dispatcher(tiny_model, tiny_spec, loaded.plan.__class__.from_replays(
        loaded.plan.num_blocks, (), [set()] * 6)), tiny_spec, SampleRequest(labels, steps=6, seed=5))
    assert (full - want).abs().max() > 1e-3


def test_without_guidance_and_a_single_image(engines, tiny_model, tiny_spec):
    one = _sample(engines[4], (9,))  # 1 image through a batch-4 engine: one chunk, padded
    loaded = load_engines(engines[4])
    want = sample_with_plan(eager_dispatcher(tiny_model, tiny_spec, loaded.plan), tiny_spec,
                            SampleRequest((9,), steps=6, seed=5))
    torch.testing.assert_close(one, want, rtol=0, atol=3e-4)
    with pytest.raises(ManifestError, match="at least 1 image"):
        load_engines(engines[2], images=0)


def test_chunked_splits_pads_and_concatenates_caches():
    calls = []

    def fn(inputs, caches, corrections):  # a stand-in VariantFn of batch 2: row-wise, records a cache
        calls.append(inputs["x"].shape[0])
        assert inputs["x"].shape[0] == 2 and caches["r"].shape[0] == 2
        return inputs["x"] * 2 + caches["r"], {"r": inputs["x"] + corrections["scale"]}

    run = chunked(fn, 2)
    x = torch.arange(5.0)[:, None]  # (5, 1)
    out, recorded = run({"x": x}, {"r": torch.ones(5, 1)}, {"scale": torch.tensor([10.0])})
    assert calls == [2, 2, 2]
    torch.testing.assert_close(out, x * 2 + 1)
    torch.testing.assert_close(recorded["r"], x + 10)
    calls.clear()
    run({"x": x[:2]}, {"r": torch.ones(2, 1)}, {"scale": torch.tensor([0.0])})
    assert calls == [2]  # the engines' own batch: one call, nothing copied
    with pytest.raises(ValueError, match="disagree on the batch size"):
        run({"x": x, "y": x[:3]}, {}, {})
