"""Grid files: complete validation (one line per problem, exit status 2, nothing written), expansion, cell ids."""
import json
from pathlib import Path

import pytest
from sweep_helpers import LOCAL_PROFILE, REPO

from fat.checks import InputError, Problems
from fat.cli import main as cli_main
from fat.sweep.cells import cell_id
from fat.sweep.launch import prepare
from fat.sweep.spec import parse_overrides
from fat.sweep.tasks import TASKS


def _problems(path: Path, *overrides: str) -> list:
    with pytest.raises(InputError) as info:
        prepare(path, list(overrides), path.parent / 'runs')
    assert not (path.parent / 'runs').exists(), 'a refused grid must leave nothing behind'
    return info.value.problems


@pytest.mark.parametrize('doc, expected', [
    ({'axes': {'fasa': ['fasa']}, 'sedes': [0]}, ["sedes: unknown grid key (did you mean 'seeds'?); valid: name,"]),
    ({'axes': {'fasa': ['fassa']}},
     ["axes.fasa[0]: FASA: unknown variant 'fassa'; valid: fasa,", "(did you mean 'fasa'?)"]),
    ({'axes': {'model': ['fat_b9']}},
     ["axes.model[0]: unknown model 'fat_b9'", 'valid: fat_b0, fat_b1, fat_b2, fat_b3']),
    ({'axes': {'lr': []}}, ['axes.lr: expected a non-empty list of values, got []']),
    ({'axes': {'lr': 0.1}}, ['axes.lr: expected a non-empty list of values, got 0.1']),
    ({'axes': {'epochs': ['ten']}}, ["axes.epochs[0]: config key 'epochs' expects int, got str 'ten'"]),
    ({'axes': {'learning_rate': [0.1]}}, ["axes.learning_rate[0]: unknown config key 'learning_rate'"]),
    ({'axes': {'fasa': ['fasa', 'no_interaction', {'interaction': 'none'}]}},
     ['axes.fasa: duplicate cell', 'fasa={"interaction":"none"} resolves to the same config as fasa=no_interaction']),
    ({'axes': {'lr': [0.1, 0.1]}}, ['axes.lr: duplicate cell']),
    ({'task': 'trian'}, ["task: unknown task 'trian' (did you mean 'train'?); valid: train, flops, bench"]),
    ({'preset': 'smok', 'axes': {'lr': [0.1]}}, ["preset: unknown train preset 'smok' (did you mean 'smoke'?)"]),
    ({'preset': 'smoke', 'base': {'fasa': 'fasaa'}, 'axes': {'lr': [0.1]}}, ["base: FASA: unknown variant 'fasaa'"]),
    ({'axes': {'lr': [0.1]}, 'seeds': [0, 'one']}, ["seeds: expected a non-empty list of integers, got [0, 'one']"]),
    ({'axes': {'lr': [0.1]}, 'slurm': {'profile': 'locl'}},
     ["slurm.profile: unknown profile 'locl' (did you mean 'local'?)"]),
    ({'axes': {'lr': [0.1]}, 'slurm': {'profile': LOCAL_PROFILE, 'gpu_per_node': 1}},
     ["slurm.gpu_per_node: unknown Slurm resource (did you mean 'gpus_per_node'?)", 'valid: partition,']),
    ({'axes': {'lr': [0.1]}, 'slurm': {'profile': LOCAL_PROFILE, 'partition': ['a', 'b']}},
     ["slurm.partition: expects str, got list ['a', 'b']"]),
    ({'axes': {'lr': [0.1]}, 'slurm': {'profile': LOCAL_PROFILE, 'timeout_min': '1h'}},
     ["slurm.timeout_min: expects int, got str '1h'"]),
    ({'axes': {'lr': [0.1]}, 'slurm': {'profile': LOCAL_PROFILE, 'setup': ['rm -rf /']}},
     ['slurm.setup: may only be set in a profile']),
    ({'zip': [{'lr': [0.1, 0.2], 'epochs': [1]}]}, ["zip[0]: the lists of a zipped group must have equal lengths"]),
    ({'axes': {'lr': [0.1]}, 'exclude': [{'lr': 0.2}]}, ['exclude[0]: matches no point of the grid: lr=0.2']),
    ({'axes': {'lr': [0.1]}, 'exclude': [{'fasa': 'fasa'}]},
     ['exclude[0].fasa: not a varied key of this grid; valid: lr']),
    ({'axes': {'lr': [0.1]}, 'include': [{'fasa': 'nope'}]}, ["include[0]: FASA: unknown variant 'nope'"]),
    ({'name': 'a b', 'axes': {'lr': [0.1]}}, ['name: expected a name of letters, digits']),
    ({'axes': {'batch_size': [7]}}, ["axes.batch_size[0]: config key 'batch_size' must be even with mixup"]),
    ({'base': {'epochs': 0}, 'axes': {'lr': [0.1]}}, ["base: config key 'epochs' must be >= 1, got 0"]),
    ({'task': 'flops', 'axes': {'model': ['fat_b0']}, 'seeds': [0]}, ["seeds: only a train grid takes 'seeds'"]),
    ({'axes': {'fasa': ['fasa', 'global_only']}, 'baseline': {'fassa': 'fasa'}},
     ["baseline.fassa: not a varied key of this grid (did you mean 'fasa'?); valid: fasa"]),
    ({'axes': {'fasa': ['fasa', 'global_only']}, 'baseline': {'fasa': 'global_onyl'}},
     ["baseline.fasa: 'global_onyl' is not one of its values (did you mean 'global_only'?); valid: fasa, global_only"]),
    ({'axes': {'lr': [0.1, 0.2]}, 'seeds': [0, 1], 'baseline': {'seed': 0}},
     ['baseline.seed: not a varied key of this grid; valid: lr']),
    ({'axes': {'epochs': [1, 2]}, 'baseline': {'epochs': True}},
     ['baseline.epochs: True is not one of its values; valid: 1, 2']),  # true is not 1
    ({'axes': {'lr': [0.1, 0.2]}, 'baseline': ['lr', 0.2]},
     ["baseline: expected a mapping of varied key -> one of its values, got list ['lr', 0.2]"]),
])
def test_bad_grids_refused_one_line_each(write_grid, doc, expected, monkeypatch):
    monkeypatch.chdir(REPO)  # profiles by name: the repository's slurm/
    path = write_grid('bad', **doc)
    problems = _problems(path)
    text = '\n'.join(problems)
    assert all(line.startswith(f'{path}: ') for line in problems), text
    for fragment in expected:
        assert fragment in text, text


def test_an_unknown_task_brings_no_follow_on_errors(write_grid, monkeypatch):
    # `task: trian` also printed "only a train grid takes 'seeds'/'preset'", which hid the real problem
    monkeypatch.chdir(REPO)
    problems = _problems(write_grid('bad', task='trian', preset='smoke', seeds=[0, 1], axes={'lr': [0.1, 0.2]}))
    assert len(problems) == 1 and "unknown task 'trian' (did you mean 'train'?)" in problems[0], problems


def test_every_problem_reported_at_once(write_grid):
    path = write_grid('many', axes={'fasa': ['fasa', 'fassa'], 'lr': ['fast']}, sedes=[1],
                      slurm={'profile': LOCAL_PROFILE, 'partiton': 'x'})
    problems = _problems(path)
    keys = [line.split(': ')[1] for line in problems]
    assert keys == ['sedes', 'slurm.partiton', 'axes.fasa[1]', 'axes.lr[0]'], problems


def test_overrides_are_validated_too(write_grid):
    path = write_grid('ov', preset='smoke', axes={'fasa': ['fasa']})
    problems = _problems(path, 'epochs=zero', 'fasa=global_only', 'slurm.mem=3', 'novalue')
    text = '\n'.join(problems)
    assert "command line: novalue: expected key=value" in text
    assert "fasa (command line): 'fasa' is an axis of this grid" in text
    assert "slurm.mem (command line): unknown Slurm resource (did you mean 'mem_gb'?)" in text
    assert "epochs (command line): config key 'epochs' expects int, got str 'zero'" in text


def test_yaml_is_safe_strict_and_reads_floats(write_grid, tmp_path):
    unsafe = tmp_path / 'unsafe.yaml'
    unsafe.write_text('axes: !!python/object/apply:os.system ["echo owned"]\n')
    assert 'invalid YAML' in _problems(unsafe)[0]
    dup = tmp_path / 'dup.yaml'
    dup.write_text('axes:\n  lr: [0.1]\n  lr: [0.2]\n')
    assert "line 3, column 3: invalid YAML: duplicate key 'lr'" in _problems(dup)[0]
    problems = Problems('command line')
    assert parse_overrides(['lr=1e-3', 'seeds=[0, 1]', 'fasa={local: static}'], problems) == {
        'lr': 0.001, 'seeds': [0, 1], 'fasa': {'local': 'static'}}
    assert not problems.lines
    assert parse_overrides(['remode=const', 'fasa=no', 'amp=false'], problems) == {
        'remode': 'const', 'fasa': 'no', 'amp': False}  # YAML 1.2 booleans: `no` stays a string


@pytest.mark.parametrize('text, expected', [
    # a typo in a model keyword: FAT's checked without torch, a timm peer's on the meta device
    ("base: {model: fat_b0, model_args: {windw_sizes: [8, 4, 2, 1]}}\naxes: {lr: [1.0e-3]}\n",
     "base: model_args: fat_b0 takes no argument 'windw_sizes' (did you mean 'window_sizes'?)"),
    ("base: {model: fat_b0, model_args: {window_sizes: [8, 4, 2]}}\naxes: {lr: [1.0e-3]}\n",
     'model_args: window_sizes expects one positive number per stage (4), got [8, 4, 2]'),
    ("base: {model: resnet18, model_args: {drop_pth_rate: 0.1}}\naxes: {lr: [1.0e-3]}\n",
     "model_args: resnet18 refuses {\"drop_pth_rate\": 0.1}: ResNet.__init__() got an unexpected keyword argument"),
    ('axes: {img_size: [0, 48]}\n', "axes.img_size[0]: config key 'img_size' must be >= 1, got 0"),
    ('axes: {hflip: [0.5, 5]}\n', "axes.hflip[1]: config key 'hflip' must be in [0, 1], got 5.0"),
    ('axes: {{lr: 1}: [1]}\n', 'line 3, column 8: invalid YAML: a mapping key must be a plain value'),
])
def test_model_args_sizes_and_keys_refused_at_plan(tmp_path, capsys, text, expected):
    path = tmp_path / 'bad.yaml'
    path.write_text(f'preset: smoke\nslurm: {{profile: {LOCAL_PROFILE}}}\n' + text)
    code = cli_main(['sweep', 'plan', str(path), '--workdir', str(tmp_path / 'runs'), '--cluster', 'local'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / 'runs').exists()


def test_cli_exit_status_2_and_nothing_submitted(write_grid, tmp_path, capsys):
    path = write_grid('cli', axes={'fasa': ['fassa']})
    code = cli_main(['sweep', 'launch', str(path), '--workdir', str(tmp_path / 'runs'), '--cluster', 'local'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"{path}: axes.fasa[0]: FASA: unknown variant 'fassa'")
    assert not (tmp_path / 'runs').exists()


def test_baseline_is_checked_at_plan_one_line_each_and_nothing_written(tmp_path, capsys):
    path = tmp_path / 'based.yaml'  # YAML text: the values as the grid file writes them
    path.write_text(f"axes: {{fasa: [fasa, global_only], lr: [8.0e-3, 4.0e-3]}}\nslurm: {{profile: {LOCAL_PROFILE}}}\n"
                    'baseline: {fasa: globl_only, lrr: 4.0e-3}\n')
    code = cli_main(['sweep', 'plan', str(path), '--workdir', str(tmp_path / 'runs'), '--cluster', 'local'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        f"{path}: baseline.fasa: 'globl_only' is not one of its values (did you mean 'global_only'?); valid: fasa, "
        'global_only',
        f"{path}: baseline.lrr: not a varied key of this grid (did you mean 'lr'?); valid: fasa, lr"], err
    assert not (tmp_path / 'runs').exists()


def test_baseline_takes_any_varied_value_and_changes_no_cell(write_grid, tmp_path):
    doc = dict(preset='smoke', axes={'fasa': ['fasa', 'global_only']}, zip=[{'lr': [8e-3, 4e-3], 'epochs': [1, 2]}],
               include=[{'fasa': 'local_only', 'lr': 2e-3}], seeds=[0, 1])
    plain = prepare(write_grid('plain', **doc), [], tmp_path / 'runs')
    based = prepare(write_grid('based', **doc, baseline={'fasa': 'local_only', 'lr': 0.004, 'epochs': 2.0}), [],
                    tmp_path / 'runs')
    assert based.grid.baseline == {'fasa': 'local_only', 'lr': 0.004, 'epochs': 2.0}  # include, zip; numbers by value
    assert plain.grid.baseline == {} and plain.grid.min_effect is None
    effect = prepare(write_grid('effect', **doc, min_effect=0.5), [], tmp_path / 'runs')
    assert effect.grid.min_effect == 0.5 and [c.id for c in effect.cells] == [c.id for c in plain.cells]
    moved = ('output_dir', 'tensorboard_dir')  # the cells' paths, under the grid's name
    assert [(c.id, c.config) for c in based.cells] == [
        (c.id, {**c.config, **{k: c.config[k].replace('/plain/', '/based/') for k in moved}}) for c in plain.cells]


def test_expansion_product_zip_seeds_include_exclude(write_grid, tmp_path):
    path = write_grid(
        'exp', preset='smoke', axes={'fasa': ['fasa', 'global_only']}, zip=[{'lr': [1e-3, 2e-3], 'epochs': [1, 2]}],
        seeds=[0, 1], exclude=[{'fasa': 'global_only', 'lr': 2e-3}], include=[{'fasa': 'local_only', 'seed': 5}])
    sweep = prepare(path, [], tmp_path / 'runs')
    points = [c.axes for c in sweep.cells]
    assert len(points) == 2 * 2 * 2 - 2 + 1
    assert {'fasa': 'fasa', 'lr': 2e-3, 'epochs': 2, 'seed': 1} in points
    assert not [p for p in points if p.get('fasa') == 'global_only' and p['lr'] == 2e-3]
    assert points[-1] == {'fasa': 'local_only', 'seed': 5}
    assert sweep.grid.varied_keys == ['fasa', 'lr', 'epochs', 'seed']
    assert all(c.dir == tmp_path / 'runs' / 'exp' / c.id and c.config['output_dir'] == str(c.dir) for c in sweep.cells)
    assert not (tmp_path / 'runs').exists(), 'planning writes nothing'


def test_cell_id_is_a_hash_of_the_canonical_config():
    train = TASKS['train']
    cfg = train.resolve({'fasa': 'no_interaction'}, 'smoke')
    same = dict(train.resolve({'fasa': {'interaction': 'none'}}, 'smoke'), output_dir='/elsewhere', workers=7)
    assert cell_id(train, cfg) == cell_id(train, same)  # presets = their axes; runtime keys do not count
    assert cell_id(train, cfg) != cell_id(train, dict(cfg, lr=cfg['lr'] * 2))
    assert len(cell_id(train, cfg)) == 12
    assert cell_id(train, cfg) == cell_id(train, train.resolve({'fasa': 'no_interaction'}, 'smoke'))


def test_committed_grids_are_valid():
    # ablations/speed.yaml is `fat speed`'s (one process, round-robin), checked by tests/test_speed.py
    for path in sorted(p for p in (REPO / 'ablations').glob('*.yaml') if p.name != 'speed.yaml'):
        sweep = prepare(path, [], Path('/nonexistent/runs'))
        assert sweep.cells, path


def test_options_and_overrides_in_any_order(write_grid, tmp_path, capsys):
    path = write_grid('order', preset='smoke', axes={'fasa': ['fasa']})
    code = cli_main(['sweep', 'plan', str(path), '--cluster', 'local', 'epochs=1', '--workdir', str(tmp_path / 'w'),
                     'lr=1e-3', '--json'])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc['summary'] == '1 cell: 1 NOT_LAUNCHED' and doc['cells'][0]['action'] == 'submit'
    assert prepare(path, ['epochs=1', 'lr=1e-3']).cells[0].id == doc['cells'][0]['id']
