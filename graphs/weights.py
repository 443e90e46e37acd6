"""Weight loading from local paths only: diffusers folders, the HF cache, safetensors, and the checkpoint layouts
of each family's record (the official DiT .pt)."""

from __future__ import annotations

import hashlib
import os
import pickletools
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .convert_official import unwrap_checkpoint
from .family import WeightFormat
from .model_spec import ModelSpec

_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_SUBFOLDERS = ("transformer", "unet")  # the denoiser's folder inside a diffusers pipeline folder


class WeightsError(ValueError):
    """Weights that cannot be found or do not fit the requested model."""


DIFFUSERS_FORMAT = "diffusers"  # WeightsInfo.format of diffusers' own keys (and of random weights)


@dataclass(frozen=True)
class WeightsInfo:
    """Where a model's weights came from, their content hash, and the layout they were converted from.

    Args:
        source: the file read (``random(seed=...)`` for random weights).
        sha256: the file's sha256 (``random-seed-N`` for random weights).
        random: True for random weights.
        format: ``diffusers``, or the family's checkpoint layout the file was converted from (``official-dit``):
            such a model is built to compute what the original model computes (docs/models.md), so the same
            file can give another forward than diffusers' own conversion of it; engine keys include it.
    """

    source: str
    sha256: str
    random: bool = False
    format: str = DIFFUSERS_FORMAT


def build_model(spec: ModelSpec, weight_format: WeightFormat | None = None) -> nn.Module:
    """An eval-mode diffusers model of ``spec`` with freshly initialised weights, built as the checkpoint layout
    ``weight_format`` needs (None: diffusers' own)."""
    if weight_format is None:
        return spec.family_record.build_model(spec.config)
    model = spec.family_record.build_model({**spec.config, **weight_format.config})
    if weight_format.adapt is not None:
        weight_format.adapt(model)
    return model


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
    raise WeightsError(f"no weights found for model {spec.name!r}{hint}. Give one of:\n{weights_help(spec)}")


def weights_help(spec: ModelSpec) -> str:
    """The lines saying which weights ``spec`` loads (its family record's)."""
    return spec.family_record.weights_help.format(repo=spec.hf_repo or "the model")


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


_READABLE = (
    "  a diffusers model folder (config.json, diffusion_pytorch_model.safetensors)\n"
    "  a .safetensors or .bin file, or a .pt file written by torch.save(model.state_dict())"
)


def read_state_dict(file: Path, expected: str = _READABLE) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors, .bin or .pt file, on the CPU (official training checkpoints included).

    A file that is no state dict of tensors (random bytes, a plain pickle, a pickled module, a list) is a
    WeightsError saying what the file holds and, from ``expected``, what ditcache reads.
    """
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(file))
        else:
            import argparse

            # official train.py checkpoints carry their argparse.Namespace beside the weights
            with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected pickle protocol")  # plain pickles: said below
                obj = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable file: say which, what it holds and what would do, no traceback
        raise _not_a_state_dict(file, _describe_unreadable(file, exc), expected) from None
    try:
        state = unwrap_checkpoint(obj)
    except ValueError:
        raise _not_a_state_dict(file, _describe_object(obj), expected) from None
    if not state:
        raise _not_a_state_dict(file, "an empty dict", expected)
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            found = f"a dict whose entry {key!r} is {_describe_object(value)}, not a tensor"
            raise _not_a_state_dict(file, found, expected)
    return state


def _not_a_state_dict(file: Path, found: str, expected: str) -> WeightsError:
    return WeightsError(f"cannot read weights from {file}: ditcache expected a state dict of tensors, the file holds "
                        f"{found}. Give one of:\n{expected}")


def _describe_object(obj: object) -> str:
    """A loaded object in a few words: ``a list of 3 items``, ``an int``."""
    name = type(obj).__name__
    article = "an" if name[:1].lower() in "aeiou" else "a"
    if isinstance(obj, (list, tuple, dict)):
        return f"{article} {name} of {len(obj)} item{'s' if len(obj) != 1 else ''}"
    return f"{article} {name}"


_PICKLE_TOPS = {"EMPTY_LIST": "list", "LIST": "list", "EMPTY_DICT": "dict", "DICT": "dict", "EMPTY_TUPLE": "tuple",
                "TUPLE": "tuple", "TUPLE1": "tuple", "TUPLE2": "tuple", "TUPLE3": "tuple", "EMPTY_SET": "set",
                "GLOBAL": "Python object", "STACK_GLOBAL": "Python object"}


def _describe_unreadable(file: Path, exc: Exception) -> str:
    """What a file torch or safetensors could not load holds, from its first bytes and the loader's message."""
    with open(file, "rb") as handle:
        head = handle.read(1 << 20)
    if not head:
        return "nothing (the file is empty)"
    blocked = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if blocked:  # a pickled object other than tensors: the weights-only loader refuses to run its code
        return (f"a pickled Python object ({blocked.group(1)}), e.g. a whole model saved with torch.save(model): "
                f"save model.state_dict() instead")
    if head.startswith(b"PK\x03\x04"):
        return f"a zip archive that is no torch.save checkpoint ({type(exc).__name__})"
    if head[:1] == b"\x80":  # pickle protocol >= 2, not written by torch.save (whose files are zip archives)
        top = _pickle_top(head)
        return f"a plain Python pickle{f' of a {top}' if top else ''} (written by pickle.dump, not torch.save)"
    if file.suffix == ".safetensors":
        return f"no safetensors data ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    return (f"no PyTorch, pickle or safetensors data (random bytes, or another format; it starts with "
            f"{head[:8].hex(' ')})")


def _pickle_top(data: bytes) -> str | None:
    """The kind of object a pickle's first opcodes build (``list``), read without running the pickle."""
    try:
        for opcode, _, _ in pickletools.genops(data):
            if opcode.name in ("PROTO", "FRAME", "MARK"):
                continue
            return _PICKLE_TOPS.get(opcode.name)
    except Exception:  # truncated or not a pickle after all
        return None
    return None


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
    state = read_state_dict(file, weights_help(spec))
    weight_format = spec.family_record.format_of(state)
    if weight_format is not None:
        try:
            state = weight_format.convert(state, spec)
        except ValueError as exc:
            raise WeightsError(f"{file}: {exc}") from None
    model = build_model(spec, weight_format)
    check_state_dict(model, state, spec, str(file))
    check_folder_config(file, spec)
    model.load_state_dict(state, strict=False)  # strictness checked above, pos_embed buffer excepted
    name = weight_format.name if weight_format is not None else DIFFUSERS_FORMAT
    return model.eval(), WeightsInfo(source=str(file), sha256=sha256_file(file), format=name)
