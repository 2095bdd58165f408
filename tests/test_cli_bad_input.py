"""The README's promise, command by command: bad input (a bad model, a bad key or value, a missing path) is one line
on stderr and exit status 2, with nothing written. In-process (`fat.cli.main`), from an empty working directory
that must stay empty."""
from pathlib import Path

import pytest

from fat.cli import main

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / 'ablations' / 'demo.yaml')
SPEED = str(REPO / 'ablations' / 'speed.yaml')

CASES = [
    (['models', 'fat_b9'], 'unrecognized arguments: fat_b9'),
    (['flops', 'fat_b9'], "unknown model 'fat_b9'"),
    (['flops', 'fat_b0', '--convention', 'nope'], "invalid choice: 'nope'"),
    (['bench', 'fat_b9', '--no-progress'], "unknown model 'fat_b9'"),
    (['bench', 'fat_b0', '--setting', 'nope', '--no-progress'], "unknown setting 'nope'"),
    (['bench', 'fat_b0', '--nope'], 'unrecognized arguments: --nope'),
    (['train', 'model=fat_b9'], "unknown model 'fat_b9'"),
    (['train', 'nope=1'], "unknown config key 'nope'"),
    (['train', '--config', '/nope/train.yaml'], '/nope/train.yaml'),
    (['train', 'dataset=imagenet', 'data_dir=/nope/imagenet'], '/nope/imagenet/train is not a folder'),
    (['sweep', 'plan', '/nope/grid.yaml'], 'grid file not found: /nope/grid.yaml'),
    (['sweep', 'plan', DEMO, 'nope=1'], "unknown config key 'nope'"),
    (['sweep', 'plan', DEMO, 'model=fat_b9'], "unknown model 'fat_b9'"),
    (['sweep', 'launch', DEMO, 'model=fat_b9', '--cluster', 'local'], "unknown model 'fat_b9'"),
    (['sweep', 'status', '/nope/grid.yaml'], 'grid file not found'),
    (['sweep', 'wait', DEMO, 'nope=1'], "unknown config key 'nope'"),
    (['sweep', 'collect', '/nope/grid.yaml'], 'grid file not found'),
    (['sweep', 'nope', DEMO], "invalid choice: 'nope'"),
    (['report', '--results', '/nope/results', '--analysis', str(REPO / 'analysis')],
     'results directory not found: /nope/results'),
    (['report', '--results', '.', '--analysis', '/nope/analysis'], 'no analysis definitions at /nope/analysis'),
    (['speed', '/nope/speed.yaml', '--profile', 'cpu'], '/nope/speed.yaml'),
    (['speed', SPEED, '--profile', 'nope'], "unknown key 'nope'"),
    (['timm', '/nope/validate.py'], 'timm script not found: /nope/validate.py'),
    (['data', 'pack', '/nope/src', 'dest', '--format', 'wds'], '/nope/src/train is not a folder'),
    (['data', 'pack', '/nope/src', 'dest', '--format', 'tar'], "invalid choice: 'tar'"),
]


@pytest.mark.parametrize('argv, message', CASES, ids=[' '.join(c[0][:3]).replace('/', '_') for c in CASES])
def test_every_command_answers_bad_input_in_one_line_with_exit_2_and_writes_nothing(argv, message, tmp_path,
                                                                                     monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count('\n') == 1 and message in err, err  # the line names the command, or the grid file
    assert not any(tmp_path.iterdir()), f'{argv} wrote {list(tmp_path.iterdir())}'
