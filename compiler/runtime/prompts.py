"""Text conditioning data: precomputed prompt embeddings (safetensors) and local T5 encoding of prompts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

# keys of an embeddings file (PixArtAlphaPipeline.encode_prompt's outputs)
EMBEDS, MASK = "prompt_embeds", "prompt_attention_mask"
NEGATIVE_EMBEDS, NEGATIVE_MASK = "negative_prompt_embeds", "negative_prompt_attention_mask"
# pooled text embeddings of the MMDiT families (FluxPipeline / StableDiffusion3Pipeline.encode_prompt's names)
POOLED, NEGATIVE_POOLED = "pooled_prompt_embeds", "negative_pooled_prompt_embeds"


@dataclass(frozen=True, eq=False)
class PromptEmbeddings:
    """Text-encoder outputs for one prompt per image, and the negative (empty) prompt that guidance contrasts.

    Args:
        embeds: (N, L, C) last hidden state of the text encoder, one row per image.
        mask: (N, L) 1 for tokens, 0 for padding.
        negative_embeds: (N, L, C), or (1, L, C) shared by all images; None: no guidance possible.
        negative_mask: (N, L) or (1, L), like ``mask``.
        pooled: (N, P) pooled text embedding per image (FLUX: CLIP's, SD3: both CLIPs'), for models that take one.
        negative_pooled: (N, P) or (1, P), the negative prompt's; needed with ``pooled`` under guidance.
    """

    embeds: torch.Tensor
    mask: torch.Tensor
    negative_embeds: torch.Tensor | None = None
    negative_mask: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.embeds.ndim != 3:
            raise ValueError(f"{EMBEDS} must be (images, tokens, channels), got shape {tuple(self.embeds.shape)}")
        n, length, _ = self.embeds.shape
        if tuple(self.mask.shape) != (n, length):
            raise ValueError(f"{MASK} has shape {tuple(self.mask.shape)}, {EMBEDS} needs ({n}, {length})")
        if (self.negative_embeds is None) != (self.negative_mask is None):
            raise ValueError(f"give both {NEGATIVE_EMBEDS} and {NEGATIVE_MASK}, or neither")
        if self.negative_embeds is not None:
            rows = self.negative_embeds.shape[0]
            if self.negative_embeds.shape[1:] != self.embeds.shape[1:] or rows not in (1, n):
                raise ValueError(f"{NEGATIVE_EMBEDS} has shape {tuple(self.negative_embeds.shape)}; it must be "
                                 f"(1 or {n}, {length}, {self.embeds.shape[2]}) like {EMBEDS}")
            if tuple(self.negative_mask.shape) != (rows, length):
                raise ValueError(f"{NEGATIVE_MASK} has shape {tuple(self.negative_mask.shape)}, needs ({rows}, {length})")
        if self.pooled is None and self.negative_pooled is not None:
            raise ValueError(f"{NEGATIVE_POOLED} given without {POOLED}")
        if self.pooled is not None:
            if self.pooled.ndim != 2 or self.pooled.shape[0] != n:
                raise ValueError(f"{POOLED} must be ({n}, channels) like {EMBEDS}'s images, got "
                                 f"{tuple(self.pooled.shape)}")
            neg = self.negative_pooled
            width = self.pooled.shape[1]
            if neg is not None and (neg.ndim != 2 or neg.shape[0] not in (1, n) or neg.shape[1] != width):
                raise ValueError(f"{NEGATIVE_POOLED} has shape {tuple(neg.shape)}; it must be (1 or {n}, "
                                 f"{width}) like {POOLED}")

    @property
    def num_images(self) -> int:
        return int(self.embeds.shape[0])

    @property
    def length(self) -> int:
        """Tokens per prompt (padded)."""
        return int(self.embeds.shape[1])

    @property
    def channels(self) -> int:
        return int(self.embeds.shape[2])

    def negatives(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The negative embeddings and mask, one row per image."""
        if self.negative_embeds is None:
            raise ValueError(f"classifier-free guidance needs {NEGATIVE_EMBEDS} (the empty prompt's embeddings): "
                             f"add them to the embeddings file, give --text-encoder to encode them, or sample with "
                             f"--guidance 1 (no guidance)")
        n = self.num_images
        return (self.negative_embeds.expand(n, -1, -1), self.negative_mask.expand(n, -1))

    def negative_pooling(self) -> torch.Tensor:
        """The negative prompt's pooled embedding, one row per image."""
        if self.negative_pooled is None:
            raise ValueError(f"classifier-free guidance with pooled embeddings needs {NEGATIVE_POOLED} (the empty "
                             f"prompt's): add it to the embeddings file, or sample with --guidance 1 (no guidance)")
        return self.negative_pooled.expand(self.num_images, -1)

    def select(self, rows: Sequence[int]) -> "PromptEmbeddings":
        """The embeddings of images ``rows`` (e.g. to repeat a prompt or cycle prompts over many images)."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        neg = None if self.negative_embeds is None else self.negatives()
        pooled = None if self.pooled is None else self.pooled[index]
        neg_pooled = None if self.negative_pooled is None else self.negative_pooling()[index]
        return PromptEmbeddings(self.embeds[index], self.mask[index],
                                None if neg is None else neg[0][index], None if neg is None else neg[1][index],
                                pooled, neg_pooled)

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Write a safetensors file with the keys PixArtAlphaPipeline uses (and the pooled ones, where given)."""
        from safetensors.torch import save_file

        tensors = {EMBEDS: self.embeds, MASK: self.mask}
        if self.negative_embeds is not None:
            tensors.update({NEGATIVE_EMBEDS: self.negative_embeds, NEGATIVE_MASK: self.negative_mask})
        if self.pooled is not None:
            tensors[POOLED] = self.pooled
        if self.negative_pooled is not None:
            tensors[NEGATIVE_POOLED] = self.negative_pooled
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> "PromptEmbeddings":
        """Read an embeddings file: ``prompt_embeds`` (N, L, C) and optionally ``prompt_attention_mask`` (N, L)
        (default: all tokens kept), ``negative_prompt_embeds`` and ``negative_prompt_attention_mask``, and for FLUX
        and SD3 ``pooled_prompt_embeds`` (N, P) and ``negative_pooled_prompt_embeds``."""
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"embeddings file {str(path)!r} does not exist")
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - say which file and why
            raise ValueError(f"cannot read embeddings from {path}: {type(exc).__name__}: {exc}") from None
        if EMBEDS not in tensors:
            raise ValueError(f"{path} has no {EMBEDS!r} tensor (keys: {', '.join(sorted(tensors)) or 'none'}); "
                             f"write {EMBEDS}, {MASK}, {NEGATIVE_EMBEDS}, {NEGATIVE_MASK}")
        embeds = tensors[EMBEDS].float()
        mask = tensors.get(MASK, torch.ones(embeds.shape[:2], dtype=torch.long)).long()
        negative = tensors.get(NEGATIVE_EMBEDS)
        negative_mask = tensors.get(NEGATIVE_MASK)
        if negative is not None and negative_mask is None:
            negative_mask = torch.ones(negative.shape[:2], dtype=torch.long)
        pooled, negative_pooled = tensors.get(POOLED), tensors.get(NEGATIVE_POOLED)
        return cls(embeds, mask, None if negative is None else negative.float(),
                   None if negative_mask is None else negative_mask.long(),
                   None if pooled is None else pooled.float(),
                   None if negative_pooled is None else negative_pooled.float())


def synthetic_prompts(images: int, length: int, channels: int, seed: int = 0, tokens: int = 20,
                      pooled: int | None = None) -> PromptEmbeddings:
    """Random embeddings of T5's output shape for timing without a text encoder: ``tokens`` real tokens per
    prompt (the rest padding) and an empty negative prompt (one token, as T5's end-of-sequence); with ``pooled``,
    pooled embeddings of that width too (FLUX, SD3), the negative prompt's included."""
    gen = torch.Generator().manual_seed(seed)
    kept = max(1, min(tokens, length))
    mask = (torch.arange(length) < kept).long().expand(images, length).clone()  # (N, L)
    negative_mask = (torch.arange(length) < 1).long()[None]  # (1, L)
    embeds = 0.1 * torch.randn(images, length, channels, generator=gen)
    negative = 0.1 * torch.randn(1, length, channels, generator=gen)
    if pooled is None:
        return PromptEmbeddings(embeds, mask, negative, negative_mask)
    return PromptEmbeddings(embeds, mask, negative, negative_mask, 0.1 * torch.randn(images, pooled, generator=gen),
                            0.1 * torch.randn(1, pooled, generator=gen))


def encode_prompts(text_encoder: str | Path, prompts: Sequence[str], negative_prompt: str | None = "",
                   max_length: int = 120, device: str | torch.device = "cpu") -> PromptEmbeddings:
    """Encode ``prompts`` with a local T5 encoder folder, as PixArtAlphaPipeline.encode_prompt does (pad to
    ``max_length`` tokens, truncate beyond; no caption cleaning). ``text_encoder`` is a folder holding a T5
    encoder and its tokenizer, or a pipeline folder with ``text_encoder/`` and ``tokenizer/``."""
    try:
        from transformers import T5EncoderModel, T5Tokenizer
    except ImportError:
        raise ValueError("encoding prompts needs transformers and sentencepiece: pip install 'ditcache[text]' "
                         "(or give precomputed --embeddings)") from None
    root = Path(text_encoder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"text encoder folder {str(root)!r} does not exist (a local T5 folder, e.g. the "
                                f"t5-v1_1-xxl of a PixArt pipeline folder)")
    encoder_dir = root / "text_encoder" if (root / "text_encoder").is_dir() else root
    tokenizer_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else root
    if not prompts:
        raise ValueError("give at least one --prompt")
    tokenizer = T5Tokenizer.from_pretrained(str(tokenizer_dir))
    encoder = T5EncoderModel.from_pretrained(str(encoder_dir)).to(device).eval()

    def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True,
                           add_special_tokens=True, return_tensors="pt")
        mask = tokens.attention_mask.to(device)  # (N, L)
        with torch.no_grad():
            embeds = encoder(tokens.input_ids.to(device), attention_mask=mask)[0]  # (N, L, C)
        return embeds.float().cpu(), mask.long().cpu()

    embeds, mask = encode(list(prompts))
    if negative_prompt is None:
        return PromptEmbeddings(embeds, mask)
    negative, negative_mask = encode([negative_prompt])
    return PromptEmbeddings(embeds, mask, negative, negative_mask)
