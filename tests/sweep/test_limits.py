"""What the cluster would refuse (`fat.sweep.limits`): parsing `scontrol show partition|node -o` recorded on the test
clusters and on an 8-GPU site (tests/sweep/data: the site's text is written in the same format by hand), checking
resources against it, and `fat sweep plan` / `launch` against the real clusters: one line per problem, launch
refuses with nothing written or submitted. Also the example site profile (slurm/example_site.yaml)."""
import json
import subprocess
from pathlib import Path

import pytest
import sweep_helpers as h

from fat.checks import Problems
from fat.cli import main as fat_main
from fat.sweep.cluster import render_sbatch, resolve_resources
from fat.sweep.limits import ClusterLimits, check_resources, parse_gres, parse_minutes, parse_scontrol

DATA = Path(__file__).parent / 'data'
EXAMPLE_SITE = h.REPO / 'slurm' / 'example_site.yaml'


def _limits(name: str) -> ClusterLimits:
    return ClusterLimits.from_text((DATA / f'scontrol_partition_{name}.txt').read_text(),
                                   (DATA / f'scontrol_node_{name}.txt').read_text())


def _resources(tmp_path: Path, **section):
    p = Problems('grid')
    res = resolve_resources(section, tmp_path / 'g.yaml', p)
    assert not p.lines, p.lines
    return res


def test_parse_scontrol_records_with_spaces_and_nested_equals():
    node, = parse_scontrol((DATA / 'scontrol_node_local.txt').read_text())
    assert node['NodeName'] == 'localhost' and node['CPUTot'] == '2' and node['Partitions'] == 'debug,high'
    assert node['OS'].startswith('Linux ') and '#1 SMP' in node['OS'] and node['RealMemory'].isdigit()
    assert node['CfgTRES'].startswith('cpu=2,mem=')
    gpu = parse_scontrol((DATA / 'scontrol_node_gpu_site.txt').read_text())
    assert [n['Gres'] for n in gpu][:1] == ['gpu:a100:8(S:0-1)'] and gpu[-1]['Gres'] == '(null)'


@pytest.mark.parametrize('text, minutes', [
    ('UNLIMITED', None), ('INFINITE', None), ('2-00:00:00', 2880), ('12:00:00', 720), ('1-02:03:00', 1563),
    ('00:30:01', 31), ('45:00', 45), ('90', 90)])
def test_parse_minutes(text, minutes):
    assert parse_minutes(text) == minutes


def test_parse_gres():
    assert parse_gres('(null)') == {}
    assert parse_gres('gpu:a100:8(S:0-1),nvme:1') == {'gpu': 8, 'gpu:a100': 8, 'nvme': 1}
    assert parse_gres('gpu:2') == {'gpu': 2} and parse_gres('gpu') == {'gpu': 1}


def test_limits_of_the_recorded_clusters():
    local = _limits('local')
    assert list(local.partitions) == ['debug', 'high'] and local.default_partition() == 'debug'
    debug = local.partitions['debug']
    assert debug.max_time_min is None and debug.max_nodes is None and [n.name for n in debug.nodes] == ['localhost']
    assert debug.nodes[0].cpus == 2 and debug.nodes[0].memory_mb > 1000
    two = _limits('two_nodes').partitions['debug']
    assert two.max_time_min == 1440 and two.max_nodes == 2 and [n.name for n in two.nodes] == ['node1', 'node2']
    gpu = _limits('gpu_site').partitions['gpu']
    assert (gpu.max_time_min, gpu.max_nodes, len(gpu.nodes)) == (2880, 4, 4)
    node = gpu.nodes[0]
    assert (node.cpus, node.cores, node.memory_mb, node.gres['gpu'], node.features) == (128, 64, 515000, 8,
                                                                                         {'a100', 'ib'})


def test_check_resources_one_line_per_refusal(tmp_path):
    site = _limits('gpu_site')
    fits = _resources(tmp_path, partition='gpu', nodes=4, gpus_per_node=8, cpus_per_task=16, mem_gb=500,
                      timeout_min=2880, constraint='a100')
    assert check_resources(fits, site) == []
    over = _resources(tmp_path, partition='gpu', nodes=5, gpus_per_node=9, cpus_per_task=16, mem_gb=600,
                      timeout_min=2881, constraint='h100')
    lines = check_resources(over, site)
    assert [line.split(':')[0] for line in lines] == ['timeout_min', 'nodes', 'cpus_per_task', 'mem_gb',
                                                       'gpus_per_node', 'constraint'], lines
    assert "exceeds partition gpu's MaxTime 2-00:00:00" in lines[0] and "MaxNodes 4" in lines[1]
    assert '9 x 16' not in lines[2] and '16 x 9 tasks = 144 CPUs a node' in lines[2] and 'at most 128' in lines[2]
    assert 'gpu:9' in lines[4] and 'gpu:8' in lines[4] and "feature 'h100'" in lines[5]
    # the default partition; a CPU partition's own MaxTime and MaxMemPerNode; an unknown partition
    assert check_resources(_resources(tmp_path, gres='gpu:a100:8'), site) == []
    cpu = check_resources(_resources(tmp_path, partition='cpu', timeout_min=721, mem_gb=200), site)
    assert len(cpu) == 2 and 'MaxTime 12:00:00' in cpu[0] and 'MaxMemPerNode 200000 MB' in cpu[1]
    assert check_resources(_resources(tmp_path, partition='gpus'), site) == [
        "partition: 'gpus' is not a partition of this cluster (partitions: gpu, cpu): sbatch would refuse it"]
    assert lines[0].endswith(': the job would never start') and lines[3].endswith(': sbatch would refuse it')


def test_example_site_profile_validates_fits_a_64_core_8_gpu_node_and_renders_requeue(tmp_path):
    res = _resources(tmp_path, profile=str(EXAMPLE_SITE))
    assert not any('activate' in line for line in res.setup)  # srun runs the launcher's python: no venv to source
    script = render_sbatch(res, 'fat-x', tmp_path / '%j', 4)
    assert '#SBATCH --requeue\n' in script and '#SBATCH --hint=nomultithread\n' in script
    assert check_resources(res, _limits('gpu_site')) == []  # 8 tasks x 8 CPUs = 64 physical cores, 48 h, 480 GB
    # what the profile asked before: 8 x 10 CPUs without SMT on 64 cores, 72 h
    old = _resources(tmp_path, profile=str(EXAMPLE_SITE), cpus_per_task=10, timeout_min=4320)
    lines = check_resources(old, _limits('gpu_site'))
    assert len(lines) == 2 and 'MaxTime' in lines[0] and '80 physical cores (hint: nomultithread)' in lines[1]


# ---------------------------------------------------------------------------------------------- the real clusters

def _over_limits(write_grid, **slurm):
    return write_grid('over', preset='smoke', axes={'fasa': ['fasa']}, slurm={'profile': h.LOCAL_PROFILE, **slurm})


@pytest.mark.slurm
def test_plan_flags_and_launch_refuses_an_over_limit_grid_on_the_test_cluster(slurm_cluster, write_grid, tmp_path,
                                                                              capsys):
    path = _over_limits(write_grid, nodes=3, cpus_per_task=3, gpus_per_node=1, mem_gb=100000)
    work = tmp_path / 'runs'
    assert fat_main(['sweep', 'plan', str(path), '--workdir', str(work), '--cluster', 'slurm']) == 1
    out, err = capsys.readouterr()
    assert 'would submit 1 cells' in out
    lines = err.splitlines()
    assert [line.split(': ')[1] for line in lines] == ['slurm.nodes', 'slurm.cpus_per_task', 'slurm.mem_gb',
                                                       'slurm.gpus_per_node'], lines
    assert all(line.startswith(f'{path}: ') for line in lines)
    assert fat_main(['sweep', 'plan', str(path), '--workdir', str(work), '--cluster', 'slurm', '--json']) == 1
    assert json.loads(capsys.readouterr().out)['refused'] == lines
    assert fat_main(['sweep', 'launch', str(path), '--workdir', str(work), '--cluster', 'slurm']) == 2
    assert capsys.readouterr().err.splitlines() == lines
    assert not work.exists()  # nothing written, nothing submitted (such a job would pend forever: still listed)
    assert subprocess.run(['squeue', '-h', '--name=fat-over'], capture_output=True, text=True, check=True).stdout == ''
    # within the limits: nothing to say
    ok = _over_limits(write_grid, nodes=1, cpus_per_task=2)
    assert fat_main(['sweep', 'plan', str(ok), '--workdir', str(work), '--cluster', 'slurm']) == 0
    assert capsys.readouterr().err == ''


@pytest.mark.two_nodes
@pytest.mark.slurm
def test_plan_flags_time_and_node_limits_on_the_two_node_cluster(two_nodes, write_grid, tmp_path, capsys):
    path = write_grid('over2', preset='smoke', axes={'fasa': ['fasa']},
                      slurm={'profile': h.TWO_NODES_PROFILE, 'nodes': 3, 'timeout_min': 1441})
    assert fat_main(['sweep', 'plan', str(path), '--workdir', str(tmp_path / 'runs')]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert "slurm.timeout_min: 1441 (1-00:01:00) exceeds partition debug's MaxTime 1-00:00:00" in lines[0]
    assert "slurm.nodes: 3 exceeds partition debug's MaxNodes 2" in lines[1]


@pytest.mark.parametrize('slurm, tasks', [({'gres': 'gpu:8'}, 8), ({'gres': 'gpu:a100:4'}, 4),
                                          ({'gpus_per_node': 2}, 2), ({}, 1)])
def test_tasks_follow_the_gpus_however_they_are_asked_for(tmp_path, slurm, tasks):
    """`gres: gpu:8`, the common idiom, gave one task per node: one rank trained, seven GPUs idle (issue 29 item 1)."""
    assert _resources(tmp_path, **slurm).tasks_per_node == tasks


@pytest.mark.parametrize('slurm, message', [
    ({'gres': 'gpu:8', 'tasks_per_node': 1}, '1 task(s) per node for 8 GPUs per node'),
    ({'gpus_per_node': 4, 'tasks_per_node': 2}, '2 GPU(s) would sit idle'),
    ({'gpus_per_node': 2, 'tasks_per_node': 4}, 'processes would share GPUs'),
])
def test_a_layout_that_leaves_gpus_idle_is_refused_at_plan(write_grid, capsys, slurm, message):
    grid = write_grid('gpus', preset='smoke', slurm=dict(slurm, profile=h.LOCAL_PROFILE))
    assert fat_main(['sweep', 'plan', str(grid), '--cluster', 'debug']) == 2
    assert message in capsys.readouterr().err
