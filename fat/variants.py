"""The FASA variant space and the FAT model names, without torch: what a grid is validated against.

`fat sweep plan | status | collect | launch` check every cell's `fasa` and `model` with this module alone, so they
start without importing torch or timm (seconds). The FASA module that builds a variant is `fat.models.fasa`, whose
docstring gives the equations of the axes below; `fat.models` re-exports these names.
"""
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Sequence, Tuple, Union

from fat.checks import close_hint

__all__ = [
    'AXES', 'FAT_ARGS', 'FAT_STAGE_ARGS', 'FasaCfg', 'FasaSpec', 'FASA_VARIANTS', 'MODEL_NAMES', 'list_fasa_variants',
    'variants_help',
    'resolve_fasa', 'resolve_fasa_stages',
]

# the models `fat.models` registers with timm (tests/test_timm_contract.py checks that the two agree)
MODEL_NAMES: Tuple[str, ...] = ('fat_b0', 'fat_b1', 'fat_b2', 'fat_b3', 'fat_proxy')
# the keyword arguments of `fat.models.FAT` (tests/test_timm_contract.py pins them to its signature): a grid's
# `model_args` is checked against them at plan, without torch. Per-stage ones take one value per stage.
FAT_STAGE_ARGS: Tuple[str, ...] = (
    'embed_dims', 'depths', 'kernel_sizes', 'num_heads', 'window_sizes', 'mlp_kernel_sizes', 'mlp_ratios')
FAT_ARGS: Tuple[str, ...] = (
    'in_chans', 'num_classes', 'global_pool') + FAT_STAGE_ARGS + ('fasa', 'drop_rate', 'drop_path_rate')

AXES: Dict[str, Tuple[str, ...]] = {
    'local': ('self_modulated', 'static', 'none'),
    'global': ('attention', 'none'),
    'downsample': ('fine_grained', 'avgpool'),
    'interaction': ('one_way', 'bidirectional', 'none'),
}


def _choice_error(what: str, value: Any, choices: Sequence[str]) -> ValueError:
    return ValueError(f"FASA: unknown {what} {value!r}; valid: {', '.join(choices)}{close_hint(value, choices)}")


@dataclass(frozen=True)
class FasaCfg:
    """One point of the FASA variant space. Defaults are the official code.

    The ``global`` axis is stored as ``global_`` (``global`` is a Python keyword); ``as_dict()`` and
    ``from_dict()`` use the axis names users type in grids.
    """
    local: str = 'self_modulated'
    global_: str = 'attention'
    downsample: str = 'fine_grained'
    interaction: str = 'one_way'

    def __post_init__(self):
        for axis, value in self.as_dict().items():
            if value not in AXES[axis]:
                raise _choice_error(f"value for axis '{axis}':", value, AXES[axis])
        if self.local == 'none' and self.global_ == 'none':
            raise ValueError("FASA: local='none' with global='none' leaves no branch; keep at least one")
        missing = 'local' if self.local == 'none' else 'global' if self.global_ == 'none' else None
        if missing and self.interaction != 'none':
            raise ValueError(
                f"FASA: interaction={self.interaction!r} needs both branches but {missing}='none'; "
                f"use interaction='none'")
        if self.global_ == 'none' and self.downsample != 'fine_grained':
            raise ValueError(
                f"FASA: downsample={self.downsample!r} has no effect with global='none' (no keys/values to "
                f"downsample); leave downsample at its default")

    def as_dict(self) -> Dict[str, str]:
        return {'local': self.local, 'global': self.global_, 'downsample': self.downsample,
                'interaction': self.interaction}

    @classmethod
    def from_dict(cls, axes: Mapping[str, str]) -> 'FasaCfg':
        """Axes not given take the official values, except that a missing branch implies interaction='none'."""
        axes = dict(axes)
        if 'global_' in axes:
            axes['global'] = axes.pop('global_')
        for key in axes:
            if key not in AXES:
                raise _choice_error('axis', key, tuple(AXES))
        if 'interaction' not in axes and 'none' in (axes.get('local'), axes.get('global')):
            axes['interaction'] = 'none'
        return cls(
            local=axes.get('local', cls.local), global_=axes.get('global', cls.global_),
            downsample=axes.get('downsample', cls.downsample), interaction=axes.get('interaction', cls.interaction))

    @property
    def name(self) -> str:
        """The preset name when this config is one, else a compact axis string."""
        for preset, (cfg, _, _) in FASA_VARIANTS.items():
            if cfg == self:
                return preset
        return ','.join(f'{k}={v}' for k, v in self.as_dict().items())


# name -> (config, what it ablates, equation); the first is the official code
FASA_VARIANTS: Dict[str, Tuple[FasaCfg, str, str]] = {
    'fasa': (
        FasaCfg(), 'nothing: the official code',
        'W_o(SiLU(L) * s(G) * G)'),
    'fasa_bidirectional': (
        FasaCfg(interaction='bidirectional'), 'adds the commented-out global<-local gate (paper wording)',
        'W_o((SiLU(L) * s(G)) * (G * s(SiLU(L))))'),
    'no_interaction': (
        FasaCfg(interaction='none'), 'the cross-modulation: branches are summed',
        'W_o(SiLU(L) + G)'),
    'avgpool_downsample': (
        FasaCfg(downsample='avgpool'), 'the fine-grained K/V downsampling: AvgPool to the same grid',
        'W_o(SiLU(L) * s(G) * G), D = AvgPool'),
    'static_conv': (
        FasaCfg(local='static'), 'the self-modulation of the local conv',
        'W_o(L * s(G) * G)'),
    'global_only': (
        FasaCfg(local='none', interaction='none'), 'the local branch (its depthwise conv)',
        'W_o(G)'),
    'local_only': (
        FasaCfg(global_='none', interaction='none'), 'the global branch (K/V projection and downsampling)',
        'W_o(SiLU(L))'),
}


def list_fasa_variants() -> Dict[str, str]:
    """Preset name -> one line saying what it ablates and its equation."""
    return {name: f'{what}; {eq}' for name, (_, what, eq) in FASA_VARIANTS.items()}


def variants_help() -> str:
    """The presets as the `fat` command's help texts list them."""
    lines = [f'  {name:<20} {text}' for name, text in list_fasa_variants().items()]
    return ('FASA variants (the `fasa` model argument):\n'
            f"  {'variant':<20} what it changes from the official FASA (removes, unless it says adds); what it "
            'computes\n' + '\n'.join(lines))


FasaSpec = Union[str, FasaCfg, Mapping[str, str]]


def resolve_fasa(spec: FasaSpec) -> FasaCfg:
    """A preset name, a FasaCfg or a dict of axes -> FasaCfg (ValueError naming the problem otherwise)."""
    if isinstance(spec, FasaCfg):
        return spec
    if isinstance(spec, str):
        if spec not in FASA_VARIANTS:
            raise _choice_error('variant', spec, tuple(FASA_VARIANTS))
        return FASA_VARIANTS[spec][0]
    if isinstance(spec, Mapping):
        return FasaCfg.from_dict(spec)
    raise ValueError(f'FASA: expected a variant name, a FasaCfg or a dict of axes, got {type(spec).__name__}')


def resolve_fasa_stages(spec: Union[FasaSpec, Sequence[FasaSpec]], num_stages: int) -> Tuple[FasaCfg, ...]:
    """One spec for every stage, or a list with one spec per stage."""
    if isinstance(spec, (list, tuple)):
        if len(spec) != num_stages:
            raise ValueError(f'FASA: a per-stage list needs {num_stages} entries, got {len(spec)}')
        return tuple(resolve_fasa(s) for s in spec)
    return (resolve_fasa(spec),) * num_stages
