"""fat-harness: FAT (Fully Adaptive Transformer) and its FASA ablations as timm models, with the tools to
count, benchmark, train, sweep and report them. `import fat` registers the models with timm."""
from .models import FASA_PRESETS, FasaCfg, list_fasa_presets, resolve_fasa

__all__ = ['FASA_PRESETS', 'FasaCfg', 'list_fasa_presets', 'resolve_fasa']
__version__ = '0.1.0'
