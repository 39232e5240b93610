"""The expert network: a DDPM/LDM-style U-Net whose token mixers are inception mixers.

Every U-Net block is a residual block (conv, time embedding) followed by a :class:`MixerBlock`.
The mixer splits its C channels into a high-frequency part (d_h channels) and a low-frequency
part (d_l channels), after iFormer (Si et al. 2022) as used by MEME:

    high, first half : max-pool 3x3 -> 1x1 conv -> GELU
    high, second half: 1x1 conv -> depthwise 3x3 conv -> GELU
    low              : avg-pool (factor p) -> multi-head self-attention -> nearest upsample (p)
    fuse             : y = concat(...); y = y + DWConv3x3(y); out = Conv1x1(y)

``d_l = ExpertSpec.attention_channels(stage)``; share 0 builds no attention parameters and share 1
builds no high-frequency parameters, so every parameter of the endpoints is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import TimestepEmbedder, group_norm
from .spec import ExpertSpec


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, then GroupNorm modulated by the time embedding (scale and shift,
    improved DDPM's ``use_scale_shift_norm``), SiLU, dropout, conv; residual connection."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels)  # -> (scale, shift)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # each (B, C, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class PooledSelfAttention(nn.Module):
    """Multi-head self-attention over an average-pooled map, upsampled back (iFormer LowMixer)."""

    def __init__(self, channels: int, head_dim: int, pool: int) -> None:
        super().__init__()
        self.heads = channels // head_dim
        self.head_dim = head_dim
        self.pool = pool
        self.qkv = nn.Linear(channels, 3 * channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool)
        B, C, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, hw, C)
        qkv = self.qkv(tokens).view(B, h * w, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, hw, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, hw, head_dim)
        out = out.transpose(1, 2).reshape(B, h * w, C).transpose(1, 2).reshape(B, C, h, w)
        if self.pool > 1:
            out = F.interpolate(out, scale_factor=self.pool, mode="nearest")
        return out


class InceptionMixer(nn.Module):
    """Channel-split token mixer: max-pool and depthwise-conv branches + pooled attention."""

    def __init__(self, channels: int, attention_channels: int, head_dim: int, pool: int) -> None:
        super().__init__()
        high = channels - attention_channels
        # channel split, in order: [max-pool branch | depthwise-conv branch | attention]
        self.split = (high // 2, high - high // 2, attention_channels)
        d_pool, d_conv, d_attn = self.split
        self.pool_proj = nn.Conv2d(d_pool, d_pool, 1) if d_pool else None
        self.conv_proj = nn.Conv2d(d_conv, d_conv, 1) if d_conv else None
        self.conv_dw = nn.Conv2d(d_conv, d_conv, 3, padding=1, groups=d_conv) if d_conv else None
        self.attention = PooledSelfAttention(d_attn, head_dim, pool) if d_attn else None
        self.fuse_dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_pool, x_conv, x_attn = torch.split(x, self.split, dim=1)
        parts = []
        if self.pool_proj is not None:
            parts.append(F.gelu(self.pool_proj(F.max_pool2d(x_pool, 3, stride=1, padding=1))))
        if self.conv_dw is not None:
            parts.append(F.gelu(self.conv_dw(self.conv_proj(x_conv))))
        if self.attention is not None:
            parts.append(self.attention(x_attn))
        y = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        y = y + self.fuse_dw(y)
        return self.proj(y)


class MixerBlock(nn.Module):
    """Pre-norm residual token-mixing block: ``x + InceptionMixer(GroupNorm(x))``."""

    def __init__(self, channels: int, attention_channels: int, head_dim: int, pool: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.mixer = InceptionMixer(channels, attention_channels, head_dim, pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.norm(x))


class UNetBlock(nn.Module):
    """ResBlock followed by a MixerBlock: the unit of every U-Net level."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, spec: ExpertSpec, stage: int) -> None:
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, spec.dropout)
        self.mix = MixerBlock(out_ch, spec.attention_channels(stage), spec.head_dim, spec.attention_pool[stage])

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.mix(self.res(x, emb))


class ExpertUNet(nn.Module):
    """U-Net with per-stage attention share. ``forward(x (B,C,H,W), t (B,)) -> (B,C,H,W)``."""

    def __init__(self, spec: ExpertSpec) -> None:
        super().__init__()
        self.spec = spec
        emb_dim = 4 * spec.base_width
        self.time_embed = TimestepEmbedder(spec.base_width, emb_dim)
        self.conv_in = nn.Conv2d(spec.image_channels, spec.base_width, 3, padding=1)
        last = spec.n_stages - 1

        self.down = nn.ModuleList()
        skip_channels, ch = [spec.base_width], spec.base_width
        for s in range(spec.n_stages):
            for _ in range(spec.blocks_per_stage[s]):
                self.down.append(UNetBlock(ch, spec.stage_width(s), emb_dim, spec, s))
                ch = spec.stage_width(s)
                skip_channels.append(ch)
            if s != last:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_channels.append(ch)

        self.mid = UNetBlock(ch, ch, emb_dim, spec, last)
        self.mid_res = ResBlock(ch, ch, emb_dim, spec.dropout)

        self.up = nn.ModuleList()
        for s in reversed(range(spec.n_stages)):
            for _ in range(spec.blocks_per_stage[s] + 1):
                self.up.append(UNetBlock(ch + skip_channels.pop(), spec.stage_width(s), emb_dim, spec, s))
                ch = spec.stage_width(s)
            if s != 0:
                self.up.append(nn.Conv2d(ch, ch, 3, padding=1))  # after nearest x2 upsampling

        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv2d(ch, spec.image_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(t)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, UNetBlock) else layer(h)
            skips.append(h)
        h = self.mid_res(self.mid(h, emb), emb)
        for layer in self.up:
            if isinstance(layer, UNetBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = layer(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


def build_expert(spec: ExpertSpec) -> ExpertUNet:
    """Build the expert U-Net described by ``spec``."""
    return ExpertUNet(spec)
