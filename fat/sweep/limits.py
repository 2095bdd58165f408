"""What the cluster would refuse: a grid's resources against its partition's limits and nodes, before any submission.

`scontrol show partition -o` and `scontrol show node -o` (one line per partition or node) give MaxTime, MaxNodes,
MinNodes, MaxMemPerNode, MaxCPUsPerNode and each node's CPUs, cores, memory, GRES and features. A job asking more
than they allow is refused by sbatch (`Requested node configuration is not available`, `Node count specification
invalid`) or takes it and leaves it pending forever (`PartitionTimeLimit`, `PartitionConfig`): `fat sweep plan`
lists each such problem on one line, and `fat sweep launch` submits nothing. Torch-free: login nodes run it.
"""
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Set

from .cluster import Resources, _run, parse_gres

__all__ = ['Node', 'Partition', 'ClusterLimits', 'parse_scontrol', 'parse_minutes', 'parse_gres', 'check_resources']

_KEY_RE = re.compile(r'(?:^|\s)([A-Za-z][\w/:.]*)=')  # a key starts a field: values may hold spaces (OS=Linux 6.1 #1)
_UNLIMITED = ('UNLIMITED', 'INFINITE', 'NONE', 'N/A', '(null)', '')


def parse_scontrol(text: str) -> List[Dict[str, str]]:
    """The records of `scontrol show <entity> -o`: one {key: value} per line."""
    records = []
    for line in text.splitlines():
        keys = list(_KEY_RE.finditer(line))
        if keys:
            records.append({m.group(1): line[m.end():keys[i + 1].start() if i + 1 < len(keys) else None].strip()
                            for i, m in enumerate(keys)})
    return records


def parse_minutes(text: str) -> Optional[int]:
    """Slurm's `[days-]hours:minutes:seconds` (also `minutes:seconds`, `minutes`) in whole minutes, rounded up;
    None for UNLIMITED."""
    if text.upper() in _UNLIMITED:
        return None
    days, _, clock = text.rpartition('-')
    parts = [int(p) for p in clock.split(':')]
    if len(parts) == 1:
        h, m, s = 0, parts[0], 0
    elif len(parts) == 2:
        h, m, s = 0, *parts
    else:
        h, m, s = parts[-3:]
    return int(days or 0) * 1440 + h * 60 + m + (s > 0)


def format_minutes(minutes: int) -> str:
    days, rest = divmod(minutes, 1440)
    return (f'{days}-' if days else '') + f'{rest // 60:02d}:{rest % 60:02d}:00'


def _int(text: Optional[str]) -> Optional[int]:
    return int(text) if text and text.isdigit() else None


@dataclass
class Node:
    name: str
    cpus: int
    cores: int  # physical cores (what `--hint=nomultithread` may use)
    memory_mb: int
    gres: Dict[str, int]
    features: Set[str]
    partitions: List[str]

    @classmethod
    def from_record(cls, r: Mapping[str, str]) -> 'Node':
        cpus = _int(r.get('CPUTot')) or _int(r.get('CPUs')) or 1
        threads = _int(r.get('ThreadsPerCore')) or 1
        features = r.get('AvailableFeatures', '')
        return cls(r['NodeName'], cpus, max(1, cpus // threads), _int(r.get('RealMemory')) or 0,
                   parse_gres(r.get('Gres', '')), set() if features in _UNLIMITED else set(features.split(',')),
                   [p for p in r.get('Partitions', '').split(',') if p])


@dataclass
class Partition:
    name: str
    default: bool
    max_time_min: Optional[int]
    max_nodes: Optional[int]
    min_nodes: int
    max_mem_per_node_mb: Optional[int]
    max_cpus_per_node: Optional[int]
    nodes: List[Node] = field(default_factory=list)

    @classmethod
    def from_record(cls, r: Mapping[str, str]) -> 'Partition':
        return cls(r['PartitionName'], r.get('Default') == 'YES', parse_minutes(r.get('MaxTime', 'UNLIMITED')),
                   _int(r.get('MaxNodes')), _int(r.get('MinNodes')) or 0, _int(r.get('MaxMemPerNode')),
                   _int(r.get('MaxCPUsPerNode')))


@dataclass
class ClusterLimits:
    partitions: Dict[str, Partition]

    @classmethod
    def from_text(cls, partitions: str, nodes: str) -> 'ClusterLimits':
        parts = {r['PartitionName']: Partition.from_record(r) for r in parse_scontrol(partitions)
                 if 'PartitionName' in r}
        for record in parse_scontrol(nodes):
            if 'NodeName' in record:
                node = Node.from_record(record)
                for name in node.partitions:
                    if name in parts:
                        parts[name].nodes.append(node)
        return cls(parts)

    @classmethod
    def query(cls) -> Optional['ClusterLimits']:
        """The limits of the Slurm cluster reachable from here (SLURM_CONF's); None where scontrol fails."""
        partitions = _run(['scontrol', 'show', 'partition', '-o'], timeout=30)
        nodes = _run(['scontrol', 'show', 'node', '-o'], timeout=30)
        if partitions is None or nodes is None:
            return None
        return cls.from_text(partitions, nodes)

    def default_partition(self) -> Optional[str]:
        return next((p.name for p in self.partitions.values() if p.default), None)


def _wanted_gres(res: Resources) -> Dict[str, int]:
    """GRES a node must have: `gres` (name[:type][:count], comma-separated) and gpus_per_node."""
    wanted = parse_gres(str(res.values['gres'])) if 'gres' in res.values else {}
    wanted = {k: v for k, v in wanted.items() if ':' in k or not any(w.startswith(f'{k}:') for w in wanted)}
    if res.values.get('gpus_per_node'):
        wanted['gpu'] = max(wanted.get('gpu', 0), res.values['gpus_per_node'])
    return wanted


# Slurm 22.05 with EnforcePartLimits=NO (its default): sbatch takes a job past a partition limit, or asking more
# nodes or CPUs than the partition has, and leaves it pending forever (PartitionTimeLimit, PartitionNodeLimit,
# PartitionConfig); it refuses memory, GRES or features no node has at once
_NEVER = ': the job would never start'
_REFUSED = ': sbatch would refuse it'


def check_resources(res: Resources, limits: ClusterLimits) -> List[str]:
    """One line per thing the cluster would refuse about these resources (`resource: why: consequence`); [] when
    they fit."""
    v = res.values
    name = v.get('partition') or limits.default_partition()
    part = limits.partitions.get(name) if name else None
    if part is None:
        known = ', '.join(limits.partitions) or 'none'
        return [(f"partition: {name!r} is not a partition of this cluster (partitions: {known})" if name else
                 f'partition: none given and the cluster has no default partition (partitions: {known})') + _REFUSED]
    where = f'partition {part.name}'
    lines = []
    if part.max_time_min is not None and v['timeout_min'] > part.max_time_min:
        lines.append(f"timeout_min: {v['timeout_min']} ({format_minutes(v['timeout_min'])}) exceeds {where}'s "
                     f'MaxTime {format_minutes(part.max_time_min)}{_NEVER}')
    nodes = v['nodes']
    if part.max_nodes is not None and nodes > part.max_nodes:
        lines.append(f"nodes: {nodes} exceeds {where}'s MaxNodes {part.max_nodes}{_NEVER}")
    elif nodes > len(part.nodes):
        lines.append(f'nodes: {nodes}, but {where} has {len(part.nodes)} node{"s" * (len(part.nodes) != 1)}{_NEVER}')
    if nodes < part.min_nodes:
        lines.append(f"nodes: {nodes} is below {where}'s MinNodes {part.min_nodes}{_NEVER}")

    # what each node must hold; the nodes that hold it all must be enough
    no_smt = str(res.additional_parameters.get('hint', '')) == 'nomultithread'
    cpus = res.tasks_per_node * v['cpus_per_task']
    mem_mb = int(v['mem_gb'] * 1024) if 'mem_gb' in v else 0
    gres = _wanted_gres(res)
    constraint = str(v.get('constraint', ''))
    feature = constraint if re.fullmatch(r'[\w.-]+', constraint) else ''  # an expression (a&b, [a|b]): not checked
    per_node = {
        'cpus_per_task': lambda n: (n.cores if no_smt else n.cpus) >= cpus,
        'mem_gb': lambda n: n.memory_mb >= mem_mb,
        'gres': lambda n: all(n.gres.get(k, 0) >= c for k, c in gres.items()),
        'constraint': lambda n: not feature or feature in n.features,
    }
    if part.max_cpus_per_node is not None and cpus > part.max_cpus_per_node:
        lines.append(f"cpus_per_task: {v['cpus_per_task']} x {res.tasks_per_node} tasks = {cpus} CPUs a node "
                     f"exceeds {where}'s MaxCPUsPerNode {part.max_cpus_per_node}{_NEVER}")
    if part.max_mem_per_node_mb is not None and mem_mb > part.max_mem_per_node_mb:
        lines.append(f"mem_gb: {v['mem_gb']} ({mem_mb} MB) exceeds {where}'s MaxMemPerNode "
                     f'{part.max_mem_per_node_mb} MB{_NEVER}')
    most = max(part.nodes, key=lambda n: (n.cores if no_smt else n.cpus), default=None)
    if most is not None and not per_node['cpus_per_task'](most):
        unit = 'physical cores (hint: nomultithread)' if no_smt else 'CPUs'
        have = most.cores if no_smt else most.cpus
        lines.append(f"cpus_per_task: {v['cpus_per_task']} x {res.tasks_per_node} tasks = {cpus} {unit} a node, "
                     f'but the nodes of {where} have at most {have}{_NEVER}')
    if mem_mb and not any(per_node['mem_gb'](n) for n in part.nodes):
        lines.append(f"mem_gb: {v['mem_gb']} ({mem_mb} MB) a node, but the nodes of {where} have at most "
                     f"{max((n.memory_mb for n in part.nodes), default=0)} MB (RealMemory){_REFUSED}")
    if gres and not any(per_node['gres'](n) for n in part.nodes):
        asked = ','.join(f'{k}:{c}' for k, c in gres.items())
        have = sorted({f'{k}:{c}' for n in part.nodes for k, c in n.gres.items()}) or ['none']
        lines.append(f"{'gres' if 'gres' in v else 'gpus_per_node'}: {asked} a node, but no node of {where} has "
                     f"that (its GRES: {', '.join(have)}){_REFUSED}")
    if feature and not any(per_node['constraint'](n) for n in part.nodes):
        have = sorted({f for n in part.nodes for f in n.features}) or ['none']
        lines.append(f"constraint: no node of {where} has feature {feature!r} (features: {', '.join(have)})"
                     + _REFUSED)
    if not lines:
        fit = [n for n in part.nodes if all(ok(n) for ok in per_node.values())]
        if len(fit) < nodes:
            lines.append(f'nodes: {nodes} needed with {cpus} CPUs' + (f', {mem_mb} MB' if mem_mb else '')
                         + (f", {','.join(f'{k}:{c}' for k, c in gres.items())}" if gres else '')
                         + (f', feature {feature}' if feature else '')
                         + f', but only {len(fit)} node{"s" * (len(fit) != 1)} of {where} have all of it{_NEVER}')
    return lines
