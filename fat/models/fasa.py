"""FASA (Fully Adaptive Self-Attention) and its ablation variant space.

Paper: `Lightweight Vision Transformer with Bidirectional Interaction` (NeurIPS 2023), https://arxiv.org/abs/2306.00396
Official code: https://github.com/qhfan/FAT (classification/models.py, commit 729ec45).

With x the GroupNorm-ed block input, Q = W_q x, L = DWConv_k(Q) (the local branch) and
G = MHA(Q; K, V = W_kv D(x)) (the global branch over a downsampled map D(x)), the released code computes
``W_o(SiLU(L) * sigmoid(G) * G)``. Each design choice behind that line is an orthogonal axis here:

==============  ==============================================  ============================================
axis            values (first = official code)                  meaning
==============  ==============================================  ============================================
local           self_modulated | static | none                  l = SiLU(L) | l = L | no local branch
global          attention | none                                g = G | no global branch
downsample      fine_grained | avgpool                          D = DWConv-BN(-1x1) ladder | AvgPool, same grid
interaction     one_way | bidirectional | none                  W_o(l*s(g)*g) | W_o((l*s(g))*(g*s(l))) | W_o(l+g)
==============  ==============================================  ============================================

With one branch absent the output is W_o of the other and ``interaction`` must be ``none``; ``downsample``
only exists with the global branch. A FASA module builds only the layers its config uses, so no variant
carries unused parameters. The variant space (`FasaCfg`, the presets, their validation) lives in the torch-free
`fat.variants` and is re-exported here.
"""
import math
from collections import OrderedDict
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import use_fused_attn

# the variant space itself is torch-free (fat.variants), so that grids are validated without torch
from fat.variants import (
    AXES,
    FASA_VARIANTS,
    FasaCfg,
    FasaSpec,
    list_fasa_variants,
    resolve_fasa,
    resolve_fasa_stages,
)

__all__ = [
    'AXES', 'FasaCfg', 'FasaSpec', 'FASA', 'FASA_VARIANTS', 'list_fasa_variants', 'resolve_fasa', 'resolve_fasa_stages',
]


def fine_grained_downsample(dim: int, window_size: int, kernel_size: int = 5) -> nn.Module:
    """The official `refined_downsample`: log2(r) steps of DWConv(k, s2)-BN, a 1x1 conv between steps.

    Each step maps n to ceil(n / 2), so the K/V grid is ceil(h / r) x ceil(w / r) for any input size.
    """
    if window_size == 1:
        return nn.Identity()
    steps = int(math.log2(window_size))
    if 2 ** steps != window_size:
        raise ValueError(f'FASA: fine_grained downsampling needs a power-of-two window size, got {window_size}')
    layers: List[Tuple[str, nn.Module]] = []
    for i in range(steps):
        layers.append((f'conv{i}', nn.Conv2d(dim, dim, kernel_size, 2, kernel_size // 2, groups=dim)))
        layers.append((f'bn{i}', nn.BatchNorm2d(dim)))
        if i != steps - 1:
            layers.append((f'linear{i}', nn.Conv2d(dim, dim, 1)))
    return nn.Sequential(OrderedDict(layers))


def avgpool_downsample(window_size: int) -> nn.Module:
    """AvgPool onto the same ceil(h / r) x ceil(w / r) grid; edge windows average their valid pixels."""
    if window_size == 1:
        return nn.Identity()
    return nn.AvgPool2d(window_size, window_size, ceil_mode=True)


class FASA(nn.Module):
    """Fully Adaptive Self-Attention on NCHW maps, configured by a `FasaCfg`."""
    fused_attn: torch.jit.Final[bool]
    self_modulate: torch.jit.Final[bool]
    interaction: torch.jit.Final[str]

    def __init__(
            self,
            dim: int,
            kernel_size: int,
            num_heads: int,
            window_size: int,
            cfg: FasaCfg = FasaCfg(),
    ):
        """
        Args:
            dim: Channels in and out.
            kernel_size: Depthwise kernel of the local branch.
            num_heads: Attention heads; channel c belongs to head c // (dim // num_heads).
            window_size: K/V downsampling ratio r (1 = full global attention).
            cfg: The variant.
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'FASA: dim {dim} is not divisible by num_heads {num_heads}')
        self.cfg = cfg
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.window_size = window_size
        self.fused_attn = use_fused_attn()
        self.self_modulate = cfg.local == 'self_modulated'
        self.interaction = cfg.interaction

        self.q = nn.Conv2d(dim, dim, 1)
        if cfg.global_ == 'attention':
            self.kv = nn.Conv2d(dim, dim * 2, 1)
            if cfg.downsample == 'fine_grained':
                self.pool = fine_grained_downsample(dim, window_size)
            else:
                self.pool = avgpool_downsample(window_size)
        else:
            self.kv = None
            self.pool = None
        if cfg.local != 'none':
            self.local_mixer = nn.Conv2d(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim)
        else:
            self.local_mixer = None
        self.mixer = nn.Conv2d(dim, dim, 1)

    def extra_repr(self) -> str:
        return f'variant={self.cfg.name}, num_heads={self.num_heads}, window_size={self.window_size}'

    def global_branch(self, q_map: torch.Tensor, kv_map: torch.Tensor) -> torch.Tensor:
        """G: multi-head attention of every query pixel over the downsampled K/V map ``W_kv D(x)``."""
        B, C, H, W = q_map.shape
        q = q_map.reshape(B, self.num_heads, self.head_dim, H * W).transpose(-1, -2)
        # channels [0, C) are K and [C, 2C) are V, each split into contiguous head chunks
        k, v = kv_map.reshape(B, 2, self.num_heads, self.head_dim, -1).transpose(-1, -2).unbind(1)
        if self.fused_attn:
            g = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.scale) @ k.transpose(-1, -2)
            g = attn.softmax(dim=-1) @ v
        return g.transpose(-1, -2).reshape(B, C, H, W)

    def local_branch(self, q_map: torch.Tensor) -> torch.Tensor:
        """l: the depthwise conv of W_q x, SiLU-modulated unless static."""
        assert self.local_mixer is not None
        local = self.local_mixer(q_map)
        return F.silu(local) if self.self_modulate else local

    def interact(self, local: Optional[torch.Tensor], g: torch.Tensor) -> torch.Tensor:
        """The two branches combined (G alone without a local branch)."""
        if local is None:
            return g
        if self.interaction == 'one_way':
            return local * F.silu(g)  # l * s(g) * g
        if self.interaction == 'bidirectional':
            return (local * torch.sigmoid(g)) * (g * torch.sigmoid(local))
        return local + g

    def attend(self, q_map: torch.Tensor, kv_map: torch.Tensor, local: Optional[torch.Tensor]) -> torch.Tensor:
        """The global branch, combined with the local one when there is one."""
        return self.interact(local, self.global_branch(q_map, kv_map))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q_map = self.q(x)
        local: Optional[torch.Tensor] = None
        if self.local_mixer is not None:
            local = self.local_branch(q_map)
        if self.kv is None:
            assert local is not None
            return self.mixer(local)
        assert self.pool is not None
        return self.mixer(self.attend(q_map, self.kv(self.pool(x)), local))
