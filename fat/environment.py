"""Names of the environment a measurement ran in, for result file names (timm's benchmark-file convention):
`pt2.14-cpu-amd_epyc`, `pt2.14-cu128-h100_80gb_hbm3`. Torch-free, so that `fat sweep collect` stays light."""
import platform
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

__all__ = ['cpu_name', 'slug', 'env_name', 'run_env_name', 'common_env_name']


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def slug(name: str) -> str:
    """`AMD EPYC 7B13 64-Core Processor` -> `amd_epyc_7b13_64_core`; vendor noise words dropped."""
    name = re.sub(r'\(r\)|\(tm\)|@.*$|\bcpu\b|\bprocessor\b|\bnvidia\b|\bgeforce\b|\brtx\b', ' ', name.lower())
    return '_'.join(re.findall(r'[a-z0-9]+', name)) or 'unknown'


def env_name(torch_version: str, device: str, device_name: str, cuda: Optional[str] = None) -> str:
    """`pt<major.minor>-cpu-<cpu>` or `pt<major.minor>-cu<cuda>-<gpu>`."""
    pt = '.'.join(torch_version.split('+')[0].split('.')[:2])
    kind = f"cu{(cuda or '').replace('.', '')}" if device.startswith('cuda') else 'cpu'
    return f'pt{pt}-{kind}-{slug(device_name)}'


def run_env_name(record: Mapping[str, Any]) -> Optional[str]:
    """The name of a training run's environment record (`environment.json` of `fat train`); None if unusable."""
    try:
        hw, versions = record['hardware'], record['versions']
        device = str(hw['device'])
        chip = (hw.get('gpus') or [''])[0] if device.startswith('cuda') else hw['cpu']
        return env_name(versions['torch'], device, chip, versions.get('cuda'))
    except (KeyError, TypeError, AttributeError, IndexError):
        return None


def common_env_name(names: Iterable[Optional[str]]) -> str:
    """One name for many runs: theirs when they agree, `mixed` when not, `unrun` when none has started."""
    known = {n for n in names if n}
    return known.pop() if len(known) == 1 else ('mixed' if known else 'unrun')
