"""Analytic multiply-accumulate counts of the DiT, PixArt and U-Net segments (matmuls, convolutions and attention)."""

from __future__ import annotations

from dataclasses import dataclass

from .model_spec import ModelSpec

TIME_FREQ_DIM = 256  # sinusoidal timestep features fed to the timestep MLP


@dataclass(frozen=True)
class SegmentCosts:
    """MACs of one denoiser call, split by segment, for a given batch.

    Args:
        head: patch embedding (U-Nets: embeddings, conv_in and everything before the first attention layer).
        blocks: one entry per block.
        tail: final modulation and projection (U-Nets: everything after the last attention layer).
        links: U-Nets: ``links[i]`` is what runs between blocks i-1 and i (resnets, samplers), whatever the step
            replays, unless a replayed range spans it; empty for chains of blocks (DiT, PixArt).
    """

    head: int
    blocks: tuple[int, ...]
    tail: int
    links: tuple[int, ...] = ()

    @property
    def full(self) -> int:
        return self.head + sum(self.blocks) + sum(self.links) + self.tail

    def blocks_range(self, start: int, end: int) -> int:
        """What replaying blocks [start, end) saves: the blocks and the links inside the range."""
        return sum(self.blocks[start:end]) + sum(self.links[start + 1:end])


def dit_costs(spec: ModelSpec, batch: int = 1) -> SegmentCosts:
    """Analytic MACs of a DiT forward on ``batch`` samples (elementwise ops and norms not counted)."""
    d = spec.hidden_size
    p = spec.patch_size
    tokens = (spec.sample_size // p) ** 2
    embedding = TIME_FREQ_DIM * d + d * d  # timestep MLP: 256 -> D -> D (label lookup is free)
    head = tokens * (p * p * spec.in_channels) * d  # patchify conv
    block = (
        embedding
        + d * 6 * d  # adaLN-zero modulation
        + 4 * tokens * d * d  # q, k, v, out projections
        + 2 * tokens * tokens * d  # scores and weighted sum
        + 8 * tokens * d * d  # MLP D -> 4D -> D
    )
    tail = embedding + d * 2 * d + tokens * d * (p * p * spec.out_channels)
    return SegmentCosts(head * batch, tuple(block * batch for _ in range(spec.num_blocks)), tail * batch)


def pixart_costs(spec: ModelSpec, batch: int = 1) -> SegmentCosts:
    """Analytic MACs of a PixArt-α forward on ``batch`` samples with ``spec.text_length`` caption tokens
    (elementwise ops, norms and the adaLN-single table adds not counted; padded tokens count, as they run)."""
    d = spec.hidden_size
    p = spec.patch_size
    tokens = (spec.sample_size // p) ** 2
    text = int(spec.text_length or 0)
    caption = int(spec.config["caption_channels"])
    head = (
        tokens * (p * p * spec.in_channels) * d  # patchify conv
        + TIME_FREQ_DIM * d + d * d  # timestep MLP: 256 -> D -> D
        + d * 6 * d  # adaLN-single: D -> 6D, shared by all blocks
        + text * (caption * d + d * d)  # caption projection: C_text -> D -> D per token
    )
    if "resolution" in spec.conditioning_inputs:  # 1024-MS micro-conditions
        size = d // 3
        head += 3 * (TIME_FREQ_DIM * size + size * size)  # height, width, aspect ratio: 256 -> D/3 -> D/3 each
    block = (
        4 * tokens * d * d  # self-attention q, k, v, out
        + 2 * tokens * tokens * d  # self-attention scores and weighted sum
        + 2 * tokens * d * d + 2 * text * d * d  # cross-attention q, out (image tokens); k, v (caption tokens)
        + 2 * tokens * text * d  # cross-attention scores and weighted sum
        + 8 * tokens * d * d  # MLP D -> 4D -> D
    )
    tail = tokens * d * (p * p * spec.out_channels)
    return SegmentCosts(head * batch, tuple(block * batch for _ in range(spec.num_blocks)), tail * batch)


def unet_costs(spec: ModelSpec, batch: int = 1) -> SegmentCosts:
    """Analytic MACs of a UNet2DConditionModel forward on ``batch`` samples, split as graphs/unet.py cuts it
    (convolutions, linear layers and attention; norms, activations, up-sampling interpolation and the class
    embedding lookup not counted). The walk mirrors diffusers' block layout: resnets (two 3x3 convolutions,
    the time projection, a 1x1 shortcut when the width changes), attention layers (spatial transformers with
    self-attention, cross-attention to ``text_length`` tokens and a GEGLU feed-forward; or plain self-attention),
    strided-conv down-samplers and nearest + 3x3-conv up-samplers."""
    config = spec.config
    widths = list(config["block_out_channels"])
    layers = int(config.get("layers_per_block", 2))
    temb = 4 * widths[0]
    context, tokens = int(config.get("cross_attention_dim") or 0), int(spec.text_length or 0)
    size = spec.sample_size
    depth = config.get("transformer_layers_per_block", 1)
    if not isinstance(depth, int):
        raise NotImplementedError(f"{spec.name}: per-block transformer_layers_per_block has no cost model yet")
    costs: list[tuple[int, bool]] = []  # (MACs, is an attention layer) in forward order

    def conv(c_in: int, c_out: int, side: int, k: int = 3) -> int:
        return k * k * c_in * c_out * side * side

    def resnet(c_in: int, c_out: int, side: int) -> None:
        shortcut = conv(c_in, c_out, side, 1) if c_in != c_out else 0
        costs.append((conv(c_in, c_out, side) + temb * c_out + conv(c_out, c_out, side) + shortcut, False))

    def attention(kind: str, c: int, side: int) -> None:
        t = side * side
        if kind.startswith("CrossAttn") or kind == "UNetMidBlock2DCrossAttn":
            macs = 2 * t * c * c + depth * (  # proj_in, proj_out (1x1); per transformer layer:
                4 * t * c * c + 2 * t * t * c  # self-attention q, k, v, out; scores and weighted sum
                + 2 * t * c * c + 2 * tokens * context * c + 2 * t * tokens * c  # cross-attention
                + 12 * t * c * c)  # GEGLU feed-forward c -> 2*4c, 4c -> c
        else:
            macs = 4 * t * c * c + 2 * t * t * c  # q, k, v, out; scores and weighted sum
        costs.append((macs, True))

    width = widths[0]
    costs.append((widths[0] * temb + temb * temb + conv(spec.in_channels, width, size), False))  # time MLP, conv_in
    skips = [width]
    for i, kind in enumerate(config["down_block_types"]):
        for _ in range(layers):
            resnet(width, widths[i], size)
            width = widths[i]
            if kind != "DownBlock2D":
                attention(kind, width, size)
            skips.append(width)
        if i < len(widths) - 1:
            size //= 2
            costs.append((conv(width, width, size), False))  # stride-2 conv, output side
            skips.append(width)
    mid = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid is not None:
        resnet(width, width, size)
        if mid == "UNetMidBlock2DCrossAttn":
            attention(mid, width, size)
            resnet(width, width, size)
    for i, kind in enumerate(config["up_block_types"]):
        out = widths[::-1][i]
        for _ in range(layers + 1):
            resnet(width + skips.pop(), out, size)
            width = out
            if kind != "UpBlock2D":
                attention(kind, width, size)
        if i < len(widths) - 1:
            size *= 2
            costs.append((conv(width, width, size), False))  # nearest x2, then 3x3 conv
    costs.append((conv(width, spec.out_channels, size), False))  # conv_out
    return _split_at_blocks(costs, batch)


def _split_at_blocks(costs: list[tuple[int, bool]], batch: int) -> SegmentCosts:
    """Head (before the first block), blocks, links (between blocks) and tail (after the last) of a flat walk."""
    blocks = [i for i, (_, is_block) in enumerate(costs) if is_block]
    if not blocks:
        raise ValueError("the model has no attention layers (blocks)")

    def total(first: int, stop: int) -> int:
        return batch * sum(m for m, _ in costs[first:stop])

    links = (0, *(total(a + 1, b) for a, b in zip(blocks, blocks[1:])))
    head, tail = total(0, blocks[0]), total(blocks[-1] + 1, len(costs))
    return SegmentCosts(head, tuple(batch * costs[i][0] for i in blocks), tail, links)
