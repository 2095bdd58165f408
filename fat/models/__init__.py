"""FAT models; importing this package registers `fat_b0`..`fat_b3` with timm."""
from .fasa import FASA, FASA_VARIANTS, FasaCfg, list_fasa_variants, resolve_fasa, resolve_fasa_stages
from .fat import FAT, checkpoint_filter_fn

__all__ = [
    'FASA', 'FASA_VARIANTS', 'FasaCfg', 'list_fasa_variants', 'resolve_fasa', 'resolve_fasa_stages',
    'FAT', 'checkpoint_filter_fn',
]
