"""FAT: Fully Adaptive Transformer.

Paper: `Lightweight Vision Transformer with Bidirectional Interaction` (Fan, Huang, Zhou, He; NeurIPS 2023),
https://arxiv.org/abs/2306.00396. Official code: https://github.com/qhfan/FAT (classification/models.py,
commit 729ec45); no official weights were released.

A faithful re-implementation of the official code as a timm model: an official state_dict loads through
`checkpoint_filter_fn` with strict=True and reproduces the official outputs to float32 round-off. Facts of the
code that differ from the paper's wording, kept here on purpose:

* every "LN" is GroupNorm(1, C), normalising each sample over (C, H, W) jointly;
* there is no patch-merging layer: the last block of stages 1-3 downsamples inside its ConvFFN
  (stride-2 depthwise conv) and its shortcut (DWConv5x5 s2 -> BN -> 1x1), its CPE and FASA running at the
  old width and resolution;
* every convolution has a bias, including those followed by BatchNorm; no custom weight init.

Feature taps (`features_only`, `forward_intermediates`): one per stage at strides 4/8/16/32 with widths
C1..C4, taken after the last block's CPE + FASA and before its downsampling ConvFFN, as the authors'
segmentation backbone (qhfan/RMT) does; the stage-4 tap is the stage output. Unlike that backbone, the taps
are not normalised (it adds GroupNorm layers the classifier does not have).
"""
import re
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ConvNormAct, DropPath, GroupNorm1, SelectAdaptivePool2d, calculate_drop_path_rates
from timm.models import build_model_with_cfg, checkpoint, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import FeatureGetterNet, feature_take_indices

from .fasa import FASA, FasaCfg, FasaSpec, resolve_fasa_stages

__all__ = ['FAT', 'checkpoint_filter_fn']


def _dwconv(dim: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(dim, dim, kernel_size, stride, kernel_size // 2, groups=dim)


class Stem(nn.Module):
    """Four Conv3x3-BN-ReLU (strides 2, 2, 1, 1), a 1x1 conv and GroupNorm(1, C): output at stride 4."""

    def __init__(self, in_chans: int, out_chs: int):
        super().__init__()
        conv_args = dict(kernel_size=3, padding=1, bias=True)
        self.conv1 = ConvNormAct(in_chans, out_chs // 2, stride=2, **conv_args)
        self.conv2 = ConvNormAct(out_chs // 2, out_chs, stride=2, **conv_args)
        self.conv3 = ConvNormAct(out_chs, out_chs, stride=1, **conv_args)
        self.conv4 = ConvNormAct(out_chs, out_chs, stride=1, **conv_args)
        self.conv5 = nn.Conv2d(out_chs, out_chs, 1)
        self.norm = GroupNorm1(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv4(self.conv3(self.conv2(self.conv1(x))))
        return self.norm(self.conv5(x))

    def fuse(self) -> nn.Module:
        """The stem for inference, BatchNorms folded (`fat.models.fuse`; timm's `reparameterize_model` convention)."""
        from .fuse import fuse_stem
        return fuse_stem(self)


class ConvFfn(nn.Module):
    """1x1 -> GELU -> DWConv (residual when stride 1) -> BN -> 1x1."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: int, kernel_size: int, stride: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.act = nn.GELU()
        self.dwconv = _dwconv(hidden_dim, kernel_size, stride)
        self.residual = stride == 1
        self.bn = nn.BatchNorm2d(hidden_dim)
        self.fc2 = nn.Conv2d(hidden_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x))
        x = x + self.dwconv(x) if self.residual else self.dwconv(x)
        return self.fc2(self.bn(x))


class FatBlock(nn.Module):
    """CPE -> FASA -> ConvFFN, each residual; with stride 2 the FFN and its shortcut downsample."""

    def __init__(
            self,
            dim: int,
            out_dim: int,
            kernel_size: int,
            num_heads: int,
            window_size: int,
            mlp_kernel_size: int,
            mlp_ratio: float,
            stride: int,
            fasa_cfg: FasaCfg,
            drop_path: float = 0.,
    ):
        super().__init__()
        self.cpe = _dwconv(dim, kernel_size)
        self.norm1 = GroupNorm1(dim)
        self.attn = FASA(dim, kernel_size, num_heads, window_size, fasa_cfg)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = GroupNorm1(dim)
        self.ffn = ConvFfn(dim, int(dim * mlp_ratio), out_dim, mlp_kernel_size, stride)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        if stride == 1 and out_dim == dim:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(OrderedDict([
                ('conv', _dwconv(dim, mlp_kernel_size, stride)),
                ('bn', nn.BatchNorm2d(dim)),
                ('proj', nn.Conv2d(dim, out_dim, 1)),
            ]))

    def forward_mixer(self, x: torch.Tensor) -> torch.Tensor:
        """Token mixing at the block's input resolution (CPE and FASA)."""
        x = x + self.cpe(x)
        return x + self.drop_path1(self.attn(self.norm1(x)))

    def forward_ffn(self, x: torch.Tensor) -> torch.Tensor:
        """Channel mixing, downsampling when the block has stride 2."""
        return self.shortcut(x) + self.drop_path2(self.ffn(self.norm2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_ffn(self.forward_mixer(x))

    def fuse(self) -> nn.Module:
        """The block for inference (`fat.models.fuse.FusedFatBlock`; timm's `reparameterize_model` convention)."""
        from .fuse import FusedFatBlock
        return FusedFatBlock(self)


class FatStage(nn.Module):
    """`depth` blocks at width `dim`; the last one maps to `out_dim` with `stride`."""

    def __init__(
            self,
            dim: int,
            out_dim: int,
            depth: int,
            stride: int,
            kernel_size: int,
            num_heads: int,
            window_size: int,
            mlp_kernel_size: int,
            mlp_ratio: float,
            fasa_cfg: FasaCfg,
            drop_path_rates: Sequence[float],
    ):
        super().__init__()
        self.grad_checkpointing = False
        self.downsamples = stride > 1
        self.blocks = nn.Sequential(*[
            FatBlock(
                dim,
                out_dim if i == depth - 1 else dim,
                kernel_size,
                num_heads,
                window_size,
                mlp_kernel_size,
                mlp_ratio,
                stride if i == depth - 1 else 1,
                fasa_cfg,
                drop_path_rates[i],
            )
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward_tap(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(feature tap, stage output): the tap is the last block's state before its ConvFFN."""
        last = len(self.blocks) - 1
        tap = x
        for i, block in enumerate(self.blocks):
            use_ckpt = self.grad_checkpointing and not torch.jit.is_scripting()
            if i == last:
                tap = checkpoint(block.forward_mixer, x) if use_ckpt else block.forward_mixer(x)
                x = checkpoint(block.forward_ffn, tap) if use_ckpt else block.forward_ffn(tap)
            else:
                x = checkpoint(block, x) if use_ckpt else block(x)
        if not self.downsamples:
            tap = x  # no downsampling FFN in this stage: the tap is its output
        return tap, x

    def fuse(self) -> nn.Module:
        """The stage for inference: its blocks fused in place, run in cache-sized chunks on CPU
        (`fat.models.fuse.FusedFatStage`; timm's `reparameterize_model` convention)."""
        from .fuse import FusedFatStage
        for i, block in enumerate(self.blocks):
            if isinstance(block, FatBlock):
                self.blocks[i] = block.fuse()
        return FusedFatStage(self)


class FAT(nn.Module):
    """Fully Adaptive Transformer (NCHW throughout)."""
    __jit_unused_properties__ = ['fasa_variant']

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Sequence[int] = (32, 80, 160, 256),
            depths: Sequence[int] = (2, 2, 6, 2),
            kernel_sizes: Sequence[int] = (3, 5, 7, 9),
            num_heads: Sequence[int] = (2, 5, 10, 16),
            window_sizes: Sequence[int] = (8, 4, 2, 1),
            mlp_kernel_sizes: Sequence[int] = (5, 5, 5, 5),
            mlp_ratios: Sequence[float] = (4., 4., 4., 4.),
            fasa: Union[FasaSpec, Sequence[FasaSpec]] = 'fasa',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
    ):
        """
        Args:
            in_chans: Input image channels.
            num_classes: Classifier outputs (0 removes the classifier).
            global_pool: Pooling before the classifier ('' keeps the spatial map).
            embed_dims: Width C_i of each stage.
            depths: Blocks per stage; the last block of every stage but the last downsamples.
            kernel_sizes: Depthwise kernel of the CPE and the FASA local branch, per stage.
            num_heads: Attention heads per stage.
            window_sizes: K/V downsampling ratio per stage.
            mlp_kernel_sizes: Depthwise kernel of the ConvFFN and the downsampling shortcut, per stage.
            mlp_ratios: ConvFFN hidden width / C_i, per stage.
            fasa: FASA variant: a variant name, a FasaCfg or a dict of axes, or a list with one per stage.
            drop_rate: Dropout before the classifier (the official code has none).
            drop_path_rate: Stochastic depth, linear over all blocks.
        """
        super().__init__()
        num_stages = len(depths)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.fasa_cfgs = resolve_fasa_stages(fasa, num_stages)
        self.grad_checkpointing = False

        self.stem = Stem(in_chans, embed_dims[0])
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        self.feature_info = []
        stages = []
        for i in range(num_stages):
            last = i == num_stages - 1
            stages.append(FatStage(
                embed_dims[i],
                embed_dims[i] if last else embed_dims[i + 1],
                depth=depths[i],
                stride=1 if last else 2,
                kernel_size=kernel_sizes[i],
                num_heads=num_heads[i],
                window_size=window_sizes[i],
                mlp_kernel_size=mlp_kernel_sizes[i],
                mlp_ratio=mlp_ratios[i],
                fasa_cfg=self.fasa_cfgs[i],
                drop_path_rates=dpr[i],
            ))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=2 ** (i + 2), module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)

        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.norm = GroupNorm1(self.num_features)
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @property
    def fasa_variant(self) -> Union[str, List[str]]:
        """The FASA variant name, or one per stage when they differ."""
        names = [cfg.name for cfg in self.fasa_cfgs]
        return names[0] if len(set(names)) == 1 else names

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        # the official optimizer exempts every 1-D parameter and bias; timm's param_groups_weight_decay
        # already does that, so nothing needs naming here
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        device = self.norm.weight.device if isinstance(self.norm, nn.GroupNorm) else None
        self.head = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that returns intermediates (the per-stage taps of the module docstring).

        Args:
            x: Input image tensor.
            indices: Take the last n stages if int, all if None, those listed if a sequence.
            norm: Apply the final norm to the last stage's tap.
            stop_early: Stop after the last requested stage.
            output_fmt: Only 'NCHW'.
            intermediates_only: Return the intermediates alone.
        """
        assert output_fmt == 'NCHW', 'Output format must be NCHW.'
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_idx = len(self.stages) - 1
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]

        x = self.stem(x)
        feat_idx = 0
        for feat_idx, stage in enumerate(stages):
            tap, x = stage.forward_tap(x)
            if feat_idx in take_indices:
                intermediates.append(self.norm(tap) if norm and feat_idx == last_idx else tap)

        if intermediates_only:
            return intermediates
        if feat_idx == last_idx:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and norm / head) that the requested intermediates do not need."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_norm or max_index < len(self.feature_info) - 1:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled features after the final GroupNorm, (B, C4, H/32, W/32)."""
        x = self.stem(x)
        x = self.stages(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0.:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# official qhfan/FAT state_dict names -> this module's names, applied in order
_OFFICIAL_RENAMES = (
    (r'^patch_embed\.conv(\d)\.conv\.0\.', r'stem.conv\1.conv.'),
    (r'^patch_embed\.conv(\d)\.conv\.1\.', r'stem.conv\1.bn.'),
    (r'^patch_embed\.layernorm\.', 'stem.norm.'),
    (r'^patch_embed\.', 'stem.'),
    (r'^layers\.', 'stages.'),
    (r'\.downsample\.0\.', '.shortcut.conv.'),
    (r'\.downsample\.1\.', '.shortcut.bn.'),
    (r'\.downsample\.2\.', '.shortcut.proj.'),
)


def _official_key(k: str) -> str:
    for pattern, repl in _OFFICIAL_RENAMES:
        k = re.sub(pattern, repl, k)
    return k


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Load an official qhfan/FAT checkpoint (a state_dict, or a dict holding one under 'model'/'state_dict')."""
    for key in ('model', 'state_dict'):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
    if not any(k.startswith(('patch_embed.', 'layers.')) for k in state_dict):
        return state_dict  # already in this module's names
    return {_official_key(k): v for k, v in state_dict.items()}


def _cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv1.conv', 'classifier': 'head',
        'paper_ids': 'arXiv:2306.00396',
        'paper_name': 'Lightweight Vision Transformer with Bidirectional Interaction',
        'origin_url': 'https://github.com/qhfan/FAT',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'fat_b0.untrained': _cfg(),
    'fat_b1.untrained': _cfg(),
    'fat_b2.untrained': _cfg(),
    'fat_b3.untrained': _cfg(),
})


def _create_fat(variant: str, pretrained: bool = False, **kwargs: Any) -> FAT:
    model = build_model_with_cfg(
        FAT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
        **kwargs,
    )
    # record the variant, so that anything measured from this model can say exactly what it was
    base = model.model if isinstance(model, FeatureGetterNet) else model
    base.pretrained_cfg = base.default_cfg = dict(base.pretrained_cfg, fasa=base.fasa_variant)
    return model


@register_model
def fat_b0(pretrained: bool = False, **kwargs: Any) -> FAT:
    model_args = dict(
        embed_dims=(32, 80, 160, 256), depths=(2, 2, 6, 2), num_heads=(2, 5, 10, 16), drop_path_rate=0.05)
    return _create_fat('fat_b0', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fat_b1(pretrained: bool = False, **kwargs: Any) -> FAT:
    model_args = dict(
        embed_dims=(48, 96, 192, 384), depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.1)
    return _create_fat('fat_b1', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fat_b2(pretrained: bool = False, **kwargs: Any) -> FAT:
    model_args = dict(
        embed_dims=(64, 128, 256, 512), depths=(2, 2, 6, 2), num_heads=(2, 4, 8, 16), drop_path_rate=0.1)
    return _create_fat('fat_b2', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fat_b3(pretrained: bool = False, **kwargs: Any) -> FAT:
    model_args = dict(
        embed_dims=(64, 128, 256, 512), depths=(4, 4, 16, 4), num_heads=(2, 4, 8, 16), drop_path_rate=0.15)
    return _create_fat('fat_b3', pretrained=pretrained, **dict(model_args, **kwargs))


# A reduced FAT for CPU ablation screening on Fashion-MNIST (docs/training.md, "The CPU proxy"). At 48x48 the
# stage maps are 12, 6, 3 and 2 pixels: with the official window sizes every stage's attention sees a 2x2 K/V grid and
# stages 1-3 keep 3, 2 and 1 fine-grained downsampling steps, as in the official model.
default_cfgs.update(generate_default_cfgs({
    'fat_proxy.untrained': _cfg(input_size=(1, 48, 48), pool_size=(2, 2), num_classes=10),
}))


@register_model
def fat_proxy(pretrained: bool = False, **kwargs: Any) -> FAT:
    model_args = dict(embed_dims=(16, 32, 64, 128), depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))
    return _create_fat('fat_proxy', pretrained=pretrained, **dict(model_args, **kwargs))
