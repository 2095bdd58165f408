"""Inference-time re-parameterisation of FAT: the same function with fewer, cheaper operations.

`fuse_model` returns an eval-only copy of a model in which every FAT stem, stage and block is replaced by its fused
equivalent:

* every BatchNorm is folded into the convolution before it (stem, ConvFFN, downsampling shortcut, the
  fine-grained K/V downsampling of FASA);
* the identity of ``x + cpe(x)`` and of the ConvFFN's ``x + dwconv(x)`` is folded into the depthwise kernel's
  centre tap, which removes two full-size additions per block;
* on CPU in float32 without autograd, a convolution followed by its activation (the ConvFFN's fc1 + GELU, FASA's
  local conv + SiLU, the stem's conv + ReLU) runs as one oneDNN primitive (`torch.ops.mkldnn._convolution_pointwise`,
  the op torch.compile's CPU backend emits for the same pattern), so the activation costs no extra pass over memory;
  elsewhere they run as two ops;
* on CPU in float32 channels_last without autograd, FASA's global branch and its interaction with the local branch
  run as one native kernel (`fat.models.native`, built on first use; about twice as fast as SDPA plus the gating
  for FAT's few K/V positions); elsewhere, or where it cannot be built, as PyTorch ops;
* residual sums and the FASA gating run in place on tensors that nothing else reads, which saves a full-size
  allocation each;
* a stage runs a large CPU batch in chunks whose ConvFFN hidden map fits in cache (`FusedFatStage`).

Outputs match the unfused model in eval mode to float32 round-off (tests check 1e-5 for every FASA variant).
FAT's stem, blocks and stages follow timm's convention: each has a ``fuse()`` method returning its fused form, so
`timm.utils.reparameterize_model` (and the ``--reparam`` flag of timm's benchmark.py, validate.py and
inference.py) applies this fusion, as it applies RepViT's, MobileOne's or FastViT's; `fuse_model` is that call on
an eval copy. `reparameterize_peer` is timm's call for every model but FAT: parameter and FLOP counts
(`fat.complexity`) describe FAT as trained, BatchNorms included, and a benchmark's generic "best" setting
(`fat.bench`) leaves FAT's hand fusion to its own, named setting.
"""
import copy
import functools
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils import reparameterize_model
from torch.nn.utils.fusion import fuse_conv_bn_weights

from . import native
from .fasa import FASA
from .fat import ConvFfn, FatBlock, FatStage, Stem

__all__ = ['fuse_model', 'reparameterize_peer', 'is_fat', 'ConvAct', 'FusedFasa', 'FusedConvFfn', 'FusedFatBlock',
           'FusedFatStage']

# activation -> (oneDNN post-op name, its algorithm)
_ONEDNN_ACTS = {'relu': ('relu', ''), 'gelu': ('gelu', 'none'), 'silu': ('swish', '')}


@torch.no_grad()
def fold_conv(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d] = None, identity: bool = False) -> nn.Conv2d:
    """A new convolution computing ``bn(x + conv(x))`` (identity) or ``bn(conv(x))``.

    Args:
        conv: A convolution; with ``identity`` a depthwise one that keeps the resolution.
        bn: The BatchNorm (eval statistics) that follows, if any.
        identity: Fold the residual ``x +`` into the kernel's centre tap.
    """
    fused = copy.deepcopy(conv)
    if identity:
        kh, kw = conv.kernel_size
        if conv.groups != conv.in_channels or conv.in_channels != conv.out_channels or conv.stride != (1, 1):
            raise ValueError('only a stride-1 depthwise convolution can absorb an identity')
        fused.weight[:, 0, kh // 2, kw // 2] += 1
    if bn is not None:
        fused.weight, fused.bias = fuse_conv_bn_weights(
            fused.weight, fused.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    return fused


def _fold_sequential(seq: nn.Module) -> nn.Module:
    """Fold each Conv2d -> BatchNorm2d pair of a Sequential (or return a non-Sequential unchanged)."""
    if not isinstance(seq, nn.Sequential):
        return seq
    layers = list(seq)
    out = []
    while layers:
        layer = layers.pop(0)
        if isinstance(layer, nn.Conv2d) and layers and isinstance(layers[0], nn.BatchNorm2d):
            layer = fold_conv(layer, layers.pop(0))
        out.append(layer)
    return nn.Sequential(*out)


class ConvAct(nn.Module):
    """``act(conv(x))``: one oneDNN primitive on CPU in float32 without autograd, two ops elsewhere."""
    onednn: torch.jit.Final[bool]
    act: torch.jit.Final[str]

    def __init__(self, conv: nn.Conv2d, act: str):
        """
        Args:
            conv: The convolution (integer padding).
            act: 'relu', 'gelu' (erf form) or 'silu'.
        """
        super().__init__()
        self.conv = conv
        self.act = act
        self.post_op, self.algorithm = _ONEDNN_ACTS[act]
        self.padding: List[int] = list(conv.padding)
        self.stride: List[int] = list(conv.stride)
        self.dilation: List[int] = list(conv.dilation)
        self.onednn = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_convolution_pointwise')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn and x.is_cpu and x.dtype == torch.float32 and not torch.is_grad_enabled():
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.conv.weight, self.conv.bias, self.padding, self.stride, self.dilation, self.conv.groups,
                self.post_op, [], self.algorithm)
        x = self.conv(x)
        if self.act == 'relu':
            return F.relu(x, inplace=True)
        if self.act == 'gelu':
            return F.gelu(x)
        return F.silu(x, inplace=True)


def fuse_stem(stem: Stem) -> nn.Sequential:
    """The stem as Conv-ReLU x4 (BatchNorm folded), the 1x1 conv and its GroupNorm."""
    layers = [ConvAct(fold_conv(cna.conv, cna.bn), 'relu') for cna in (stem.conv1, stem.conv2, stem.conv3, stem.conv4)]
    return nn.Sequential(*layers, stem.conv5, stem.norm)


class FusedFasa(nn.Module):
    """FASA for inference: the K/V downsampling's BatchNorms folded, the local conv fused with its SiLU, the gating
    computed in place.

    Holds the same layers as the `FASA` it is made from and computes the same variant.
    """
    fused_attn: torch.jit.Final[bool]
    interaction: torch.jit.Final[str]
    native: torch.jit.Final[bool]

    def __init__(self, fasa: FASA):
        super().__init__()
        self.num_heads = fasa.num_heads
        self.head_dim = fasa.head_dim
        self.scale = fasa.scale
        self.fused_attn = fasa.fused_attn
        self.interaction = fasa.interaction
        self.q = fasa.q
        self.kv = fasa.kv
        self.pool = None if fasa.pool is None else _fold_sequential(fasa.pool)
        if fasa.local_mixer is not None and fasa.self_modulate:
            self.local_mixer = ConvAct(fasa.local_mixer, 'silu')  # l = SiLU(L)
        else:
            self.local_mixer = fasa.local_mixer
        self.mixer = fasa.mixer
        # the global branch and the interaction as one native CPU kernel, where it applies (fat.models.native)
        self.native = self.kv is not None and native.load()

    # the same attention (on the folded K/V downsampling) and the same control flow as FASA
    global_branch = FASA.global_branch
    forward = FASA.forward

    def attend(self, q_map: torch.Tensor, kv_map: torch.Tensor, local: Optional[torch.Tensor]) -> torch.Tensor:
        if not torch.jit.is_scripting() and self.native and native.fasa_attention_applies(q_map, kv_map, local):
            return torch.ops.fat.fasa_attention(q_map, kv_map, self.num_heads, self.scale, local, self.interaction)
        return self.interact(local, self.global_branch(q_map, kv_map))

    def local_branch(self, q_map: torch.Tensor) -> torch.Tensor:
        assert self.local_mixer is not None
        return self.local_mixer(q_map)  # SiLU already fused into it when self-modulated

    def interact(self, local: Optional[torch.Tensor], g: torch.Tensor) -> torch.Tensor:
        """FASA's interaction, in place on the branch outputs (nothing else reads them)."""
        if local is None:
            return g
        if self.interaction == 'one_way':
            return local.mul_(F.silu(g, inplace=True))
        if self.interaction == 'bidirectional':
            gate = torch.sigmoid(g)
            return g.mul_(torch.sigmoid(local)).mul_(local.mul_(gate))
        return local.add_(g)


class FusedConvFfn(nn.Module):
    """ConvFFN for inference: fc1 + GELU -> DWConv (identity and BatchNorm folded) -> fc2."""

    def __init__(self, ffn: ConvFfn):
        super().__init__()
        self.fc1 = ConvAct(ffn.fc1, 'gelu')
        self.dwconv = fold_conv(ffn.dwconv, ffn.bn, identity=ffn.residual)
        self.fc2 = ffn.fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dwconv(self.fc1(x)))


class FusedFatBlock(nn.Module):
    """FatBlock for inference (no drop path): CPE with its identity folded, FASA and ConvFFN fused."""

    def __init__(self, block: FatBlock):
        super().__init__()
        self.cpe = fold_conv(block.cpe, identity=True)
        self.norm1 = block.norm1
        self.attn = FusedFasa(block.attn)
        self.norm2 = block.norm2
        self.ffn = FusedConvFfn(block.ffn)
        self.shortcut = _fold_sequential(block.shortcut)

    def forward_mixer(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cpe(x)
        return self.attn(self.norm1(x)).add_(x)

    def forward_ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.norm2(x)).add_(self.shortcut(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_ffn(self.forward_mixer(x))


@functools.cache
def last_level_cache_bytes() -> int:
    """The CPU's largest cache (Linux sysfs), or 32 MiB where it cannot be read."""
    sizes = []
    for entry in Path('/sys/devices/system/cpu/cpu0/cache').glob('index*/size'):
        text = entry.read_text().strip()
        sizes.append(int(text[:-1]) * {'K': 2 ** 10, 'M': 2 ** 20}[text[-1]] if text[-1] in 'KM' else int(text))
    return max(sizes, default=32 * 2 ** 20)


class FusedFatStage(nn.Module):
    """A FatStage of fused blocks that runs a large CPU batch in chunks small enough to stay in cache.

    Inference on a CPU streams each block's ConvFFN hidden map (4C x H x W per image) through memory several times:
    written by fc1, read and written by the depthwise conv, read by fc2. When a batch's hidden map outgrows the
    last-level cache, running the stage's blocks chunk by chunk keeps it there (FAT-B0 at 224, batch 16: the first
    stage in two chunks of 8, about 8 % faster end to end). Images are independent in eval mode: the result is the
    same.
    """

    def __init__(self, stage: FatStage):
        super().__init__()
        self.blocks = stage.blocks
        self.downsamples = stage.downsamples
        self.grad_checkpointing = False
        self.hidden = self.blocks[0].ffn.fc1.conv.out_channels
        self.budget = last_level_cache_bytes() // 2  # the other half for the maps around it, and other work

    forward_tap = FatStage.forward_tap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = -(-x.shape[0] * self.hidden * x.shape[2] * x.shape[3] * x.element_size() // self.budget)
        if x.device.type != 'cpu' or chunks <= 1:
            return self.blocks(x)
        return torch.cat([self.blocks(part) for part in x.chunk(chunks)])


def is_fat(model: nn.Module) -> bool:
    """Whether a model holds FAT's own modules (stem, stages, blocks), fused or not."""
    return any(isinstance(m, (Stem, FatStage, FatBlock, FusedFatStage, FusedFatBlock)) for m in model.modules())


def reparameterize_peer(model: nn.Module) -> nn.Module:
    """`timm.utils.reparameterize_model` (in place) for any model but FAT, which is returned as built."""
    return model if is_fat(model) else reparameterize_model(model, inplace=True)


def fuse_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Re-parameterize a model for inference: `timm.utils.reparameterize_model` on an eval copy, which fuses FAT's
    stems, stages and blocks through their ``fuse()`` methods and re-parameterizes any other timm model that has an
    inference form.

    Args:
        model: Any timm model (FAT or not, plain or wrapped, e.g. ``features_only``).
        inplace: Modify ``model`` itself rather than a deep copy.

    Returns:
        The fused model, in eval mode. It is for inference only: training it would not train the original.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    return reparameterize_model(model, inplace=True)
