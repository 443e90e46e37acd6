"""Weight loading from local paths only: diffusers folders, the HF cache, official .pt, safetensors."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .convert_official import convert_official_state_dict, is_official_state_dict, unwrap_checkpoint
from .registry import ModelSpec

_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_SUBFOLDERS = ("transformer", "unet")  # the denoiser's folder inside a diffusers pipeline folder


class WeightsError(ValueError):
    """Weights that cannot be found or do not fit the requested model."""


@dataclass(frozen=True)
class WeightsInfo:
    """Where a model's weights came from and their content hash."""

    source: str
    sha256: str
    random: bool = False


def build_model(spec: ModelSpec) -> nn.Module:
    """An eval-mode diffusers model of ``spec`` with freshly initialised weights."""
    if spec.family == "pixart":
        from diffusers import PixArtTransformer2DModel

        return PixArtTransformer2DModel(**spec.config).eval()
    if spec.family == "unet":
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(**spec.config).eval()
    if spec.family != "dit":
        raise NotImplementedError(f"model family {spec.family!r} is not supported yet")
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(**spec.config).eval()


def hf_cache_dirs(repo: str) -> list[Path]:
    """Snapshot folders of ``repo`` in the local Hugging Face cache (never downloads)."""
    roots = []
    if os.environ.get("HF_HUB_CACHE"):
        roots.append(Path(os.environ["HF_HUB_CACHE"]))
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    roots.append(hf_home / "hub")
    folder = "models--" + repo.replace("/", "--")
    found = []
    for root in roots:
        snapshots = root / folder / "snapshots"
        if snapshots.is_dir():
            ref = root / folder / "refs" / "main"
            main = snapshots / ref.read_text().strip() if ref.is_file() else None
            if main is not None and main.is_dir():
                found.append(main)  # what refs/main points to comes first
            found.extend(sorted(p for p in snapshots.iterdir() if p.is_dir() and p != main))
    return found


def resolve_weights(spec: ModelSpec, weights: str | os.PathLike | None) -> Path:
    """The weights path to load for ``spec``: explicit, bundled, or found in the local HF cache."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.exists():
            raise WeightsError(f"weights path {str(path)!r} does not exist")
        return path
    if spec.bundled_path is not None and spec.bundled_path.is_dir():
        return spec.bundled_path
    if spec.hf_repo:
        for snapshot in hf_cache_dirs(spec.hf_repo):
            if any((snapshot / sub).is_dir() for sub in _SUBFOLDERS) or (snapshot / "config.json").is_file():
                return snapshot
    hint = f" (looked in the local Hugging Face cache for {spec.hf_repo})" if spec.hf_repo else ""
    if spec.family == "unet":
        raise WeightsError(
            f"no weights found for model {spec.name!r}{hint}. Give one of:\n"
            f"  --weights DIR        a diffusers UNet2DConditionModel folder, or a StableDiffusionPipeline folder\n"
            f"                       with unet/ (e.g. a local copy of {spec.hf_repo or 'the model'})\n"
            f"  --weights FILE       a .safetensors/.bin file with diffusers U-Net keys\n"
            f"  --random-weights     random initialisation, for timing only (outputs are noise)"
        )
    raise WeightsError(
        f"no weights found for model {spec.name!r}{hint}. Give one of:\n"
        f"  --weights DIR        a diffusers model folder (or a pipeline folder with transformer/ or unet/),\n"
        f"                       e.g. a local copy of {spec.hf_repo or 'the model'}\n"
        f"  --weights FILE.pt    the official facebookresearch/DiT checkpoint (e.g. DiT-XL-2-256x256.pt),\n"
        f"                       or a .safetensors file with diffusers or official keys\n"
        f"  --random-weights     random initialisation, for timing only (outputs are noise)"
    )


def _weight_file(path: Path) -> Path:
    """The single weights file behind a folder or file path."""
    if path.is_file():
        return path
    folder = next((path / sub for sub in _SUBFOLDERS if (path / sub).is_dir()), path)
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    sharded = sorted(folder.glob("diffusion_pytorch_model-*.safetensors"))
    if sharded:
        raise WeightsError(f"{folder} holds sharded weights; merge them into one safetensors file first")
    raise WeightsError(
        f"{folder} has no {' or '.join(_WEIGHT_FILES)}; point --weights at a diffusers model folder "
        f"(the one with config.json) or at a checkpoint file"
    )


def read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors, .bin or .pt file, on the CPU (official training checkpoints included)."""
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        import argparse

        # official train.py checkpoints carry their argparse.Namespace beside the weights
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(str(file), map_location="cpu", weights_only=True)
        return unwrap_checkpoint(obj)
    except WeightsError:
        raise
    except Exception as exc:  # unreadable file: say which and why, no traceback
        raise WeightsError(f"cannot read weights from {file}: {type(exc).__name__}: {exc}") from None


def sha256_file(file: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_ARCHITECTURE_KEYS = ("num_attention_heads", "attention_head_dim", "num_layers", "patch_size", "in_channels",
                      "out_channels", "num_embeds_ada_norm", "caption_channels", "interpolation_scale",
                      "use_additional_conditions", "block_out_channels", "layers_per_block", "down_block_types",
                      "up_block_types", "cross_attention_dim", "num_class_embeds")


def check_folder_config(file: Path, spec: ModelSpec) -> None:
    """Raise WeightsError when a config.json beside the weights describes another architecture
    (shapes alone cannot tell 2 heads x 16 from 4 heads x 8)."""
    import json

    config_file = file.parent / "config.json"
    if not config_file.is_file():
        return
    config = json.loads(config_file.read_text())
    for key in _ARCHITECTURE_KEYS:
        if key in config and config[key] is not None and key in spec.config and _plain(config[key]) != _plain(
                spec.config[key]):
            raise WeightsError(
                f"{config_file} has {key}={config[key]} but {spec.name} needs {key}={spec.config[key]}; "
                f"choose the --model these weights were trained as"
            )


def _plain(value):
    """JSON lists and Python tuples compare equal (U-Net configs hold lists of block types and widths)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], spec: ModelSpec, source: str) -> None:
    """Raise WeightsError naming the first tensor of ``state`` that does not fit ``model``."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            if key.endswith("pos_embed.pos_embed"):
                continue  # fixed sin-cos buffer, rebuilt by the model
            raise WeightsError(
                f"weights {source} do not fit {spec.name}: tensor {key!r} (shape {tuple(tensor.shape)}) is missing; "
                f"are these weights for another model? choose the matching --model"
            )
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise WeightsError(
                f"weights {source} do not fit {spec.name}: tensor {key!r} has shape {tuple(state[key].shape)}, "
                f"{spec.name} needs {tuple(tensor.shape)}; choose the --model these weights were trained as"
            )
    extra = [key for key in state if key not in expected]
    if extra:
        raise WeightsError(
            f"weights {source} do not fit {spec.name}: unexpected tensor {extra[0]!r} "
            f"({len(extra)} unexpected in all); choose the --model these weights were trained as"
        )


def load_model(
    spec: ModelSpec,
    weights: str | os.PathLike | None = None,
    random_weights: bool = False,
    seed: int = 0,
) -> tuple[nn.Module, WeightsInfo]:
    """Build ``spec`` in eval mode and load its weights; random weights only when asked for."""
    if random_weights:
        if weights is not None:
            raise WeightsError("give either --weights or --random-weights, not both")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(spec)
        return model, WeightsInfo(source=f"random(seed={seed})", sha256=f"random-seed-{seed}", random=True)
    path = resolve_weights(spec, weights)
    file = _weight_file(path)
    state = read_state_dict(file)
    if spec.family == "unet" and any(k.startswith("model.diffusion_model.") for k in state):
        raise WeightsError(
            f"{file} is an original (CompVis/LDM) Stable Diffusion checkpoint, not diffusers weights; convert it "
            f"with diffusers' StableDiffusionPipeline.from_single_file(...).save_pretrained(DIR) and pass --weights DIR"
        )
    if is_official_state_dict(state):
        try:
            state = convert_official_state_dict(state, spec.num_blocks)
        except ValueError as exc:
            raise WeightsError(f"{file}: {exc}") from None
    model = build_model(spec)
    check_state_dict(model, state, spec, str(file))
    check_folder_config(file, spec)
    model.load_state_dict(state, strict=False)  # strictness checked above, pos_embed buffer excepted
    return model.eval(), WeightsInfo(source=str(file), sha256=sha256_file(file))

