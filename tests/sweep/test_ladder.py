"""Fidelity ladders: rung ids, what a launch covers, per-rung collections, and `fat sweep promote` (refusal before
collection, idempotence, --top-k), with real training cells run in this process (the `debug` executor)."""
import json
from pathlib import Path

import pandas as pd
import pytest
import submitit
from sweep_helpers import REPO

from fat.cli import main as cli_main
from fat.report import ladder_stats
from fat.rundir import State
from fat.sweep.cells import read_records
from fat.sweep.ladder import point_of, scoped
from fat.sweep.launch import launch, prepare


@pytest.fixture(autouse=True)
def _no_slurm(monkeypatch):
    """These cells run in this process (`--cluster debug`): no squeue call (seconds each where Slurm is down)."""
    monkeypatch.setattr(submitit.AutoExecutor, 'which', staticmethod(lambda: 'local'))


LADDER = [{'name': 'lo', 'img_size': 32}, {'name': 'mid', 'epochs': 2}, {'name': 'hi', 'epochs': 3}]


def _grid(write_grid, **extra):
    doc = dict(preset='smoke', base={'train_subset': 32, 'val_subset': 32, 'epochs': 1},
               axes={'fasa': ['fasa', 'global_only']}, seeds=[0, 1], ladder=LADDER)
    return write_grid('lad', **{**doc, **extra})


def test_a_rung_is_part_of_the_cell_id_and_grids_without_a_ladder_keep_theirs(write_grid, tmp_path):
    sweep = prepare(_grid(write_grid), [], tmp_path / 'runs')
    assert len(sweep.cells) == 2 * 2 * 3
    assert [list(c.axes) for c in sweep.cells[:1]] == [['rung', 'fasa', 'seed']]
    assert [c.rung for c in sweep.cells] == ['lo'] * 4 + ['mid'] * 4 + ['hi'] * 4
    assert len({c.id for c in sweep.cells}) == 12
    assert {c.config['img_size'] for c in sweep.cells if c.rung == 'lo'} == {32}
    assert {c.config['epochs'] for c in sweep.cells if c.rung == 'hi'} == {3}
    # the rung's name is hashed too: renaming it changes the ids, the config alone does not make them
    renamed = prepare(_grid(write_grid, ladder=[dict(LADDER[0], name='low'), *LADDER[1:]]), [], tmp_path / 'runs')
    assert {c.id for c in renamed.cells if c.rung == 'low'}.isdisjoint(c.id for c in sweep.cells)
    # the committed demo collection was made before ladders existed: its grid must expand to the same ids
    demo = prepare(REPO / 'ablations' / 'demo.yaml', [], tmp_path / 'runs')
    collected = pd.read_csv(REPO / 'results' / 'demo-pt2.14-cpu-amd_epyc.csv')
    assert [c.id for c in demo.cells] == list(collected['cell'])


@pytest.mark.parametrize('ladder_doc, message', [
    ([{'name': 'only'}], 'at least two rungs'),
    ([{'name': 'a', 'fasa': 'fasa'}, {'name': 'b'}], 'ladder[0].fasa: a rung changes the fidelity, not the points'),
    ([{'name': 'a', 'seed': 3}, {'name': 'b'}], 'ladder[0].seed'),
    ([{'name': 'a', 'epochs': 2}, {'name': 'a'}], "ladder[1].name: 'a' names two rungs"),
    ([{'name': 'a', 'epochs': 2}, {'name': 'b', 'epochs': 2}], "'b' sets the same config as 'a'"),
    ([{'name': 'a', 'epochs': 'two'}, {'name': 'b'}], 'ladder[0] (a)'),
])
def test_bad_ladders_are_one_line_each_and_exit_2(write_grid, tmp_path, capsys, ladder_doc, message):
    grid = _grid(write_grid, ladder=ladder_doc)
    assert cli_main(['sweep', 'plan', str(grid), '--workdir', str(tmp_path / 'runs')]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / 'runs').exists()


def _submissions(sweep):
    return sum(r.get('event') == 'submitted' for c in sweep.cells for r in read_records(c.dir))


def test_promote_refuses_before_collect_is_idempotent_and_takes_top_k(write_grid, tmp_path, capsys):
    grid, workdir, out = _grid(write_grid), tmp_path / 'runs', tmp_path / 'results'
    args = [str(grid), '--workdir', str(workdir)]
    sweep = prepare(grid, [], workdir)
    assert cli_main(['sweep', 'promote', *args, '--cluster', 'debug']) == 2  # nothing launched
    assert 'nothing launched yet' in capsys.readouterr().err
    first = scoped(sweep)
    assert {c.rung for c in first.cells} == {'lo'}
    launch(first, 'debug')
    assert {st.state for st in sweep.states() if st.cell.rung == 'lo'} == {State.DONE}

    # refused before the lower rung is collected: one line, exit 2, nothing submitted
    before = _submissions(sweep)
    assert cli_main(['sweep', 'promote', *args, '--cluster', 'debug']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rung 'lo' is not collected" in err[0]
    assert _submissions(sweep) == before

    assert cli_main(['sweep', 'collect', *args, '--out', str(out)]) == 0
    written = sorted(p.name for p in out.glob('*.csv'))
    assert [n.split('-')[0] for n in written] == ['lad.hi', 'lad.lo', 'lad.mid']
    lo = pd.read_csv(next(out.glob('lad.lo-*.csv')))
    assert list(lo.columns[:5]) == ['grid', 'cell', 'rung', 'fasa', 'seed'] and set(lo['status']) == {State.DONE}
    assert [r['name'] for r in json.loads(lo['ladder'].iloc[0])] == ['lo', 'mid', 'hi']

    # promotes what the statistics module says, and says why for each point
    assert cli_main(['sweep', 'promote', *args, '--cluster', 'debug']) == 0
    printed = capsys.readouterr().out
    runs = ladder_stats.point_runs([(point_of(c), c.axes['seed'], row.top1) for c, row in
                              zip([c for c in sweep.cells if c.rung == 'lo'], lo.itertuples(), strict=True)])
    expected = {d.point for d in ladder_stats.select(runs, 1.0) if d.promote}
    states = sweep.states()
    mid = {point_of(st.cell) for st in states if st.cell.rung == 'mid' and st.state == State.DONE}
    assert mid == expected and "rung 'lo' -> 'mid'" in printed
    assert all(st.state == State.NOT_LAUNCHED for st in states if st.cell.rung == 'mid' and point_of(st.cell) not in
               expected)
    assert all(read_records(st.cell.dir)[0]['promoted_from'] == 'lo' for st in states
               if st.cell.rung == 'mid' and st.state == State.DONE)

    # a second promote: 'mid' is not collected yet, so it refuses and submits nothing new
    before = _submissions(sweep)
    assert cli_main(['sweep', 'promote', *args, '--cluster', 'debug']) == 2
    err = capsys.readouterr().err  # collected before its cells ran: not collected as they are now
    assert "rung 'mid' changed since it was collected" in err and 'fat sweep collect' in err
    assert _submissions(sweep) == before

    # collected: --top-k 1 promotes one point, both its seeds; then the top is reached and nothing more is done
    assert cli_main(['sweep', 'collect', *args, '--out', str(out)]) == 0
    assert cli_main(['sweep', 'promote', *args, '--cluster', 'debug', '--top-k', '1']) == 0
    hi = [st for st in sweep.states() if st.cell.rung == 'hi' and st.state != State.NOT_LAUNCHED]
    assert len(hi) == 2 and len({point_of(st.cell) for st in hi}) == 1
    before = _submissions(sweep)
    assert cli_main(['sweep', 'promote', *args, '--cluster', 'debug']) == 0
    assert 'nothing to promote' in capsys.readouterr().out
    assert _submissions(sweep) == before
    # a plain relaunch covers the first rung and what was promoted, nothing else; --rung covers a whole rung
    assert {c.id for c in scoped(sweep).cells} == {c.id for c in sweep.cells if c.rung == 'lo'} | \
        {c.id for c in sweep.cells if (Path(c.dir) / 'cell.json').is_file()}
    assert len(scoped(sweep, 'hi').cells) == 4


def test_select_drops_only_points_shown_worse_at_min_effect():
    runs = {'best': {0: 80.0, 1: 81.0, 2: 80.5},
            'close': {0: 79.9, 1: 81.2, 2: 80.1},        # within noise: kept
            'worse': {0: 70.0, 1: 70.8, 2: 70.3},        # 10 points down on every seed: dropped
            'lost': {}}                                   # no usable run: never promoted
    decisions = {d.point: d for d in ladder_stats.select(runs, min_effect=1.0)}
    assert [decisions[p].promote for p in ('best', 'close', 'worse', 'lost')] == [True, True, False, False]
    assert 'differs' in decisions['worse'].why and decisions['lost'].why == 'no usable run'
    top = {d.point: d.promote for d in ladder_stats.select(runs, 1.0, top_k=2)}
    assert top == {'best': True, 'close': True, 'worse': False, 'lost': False}


@pytest.mark.parametrize('extra, argv, message', [
    ({}, ['launch', '--rung', 'top', '--dry-run'], "--rung: 'top' is not a rung of"),
    ({}, ['launch', 'epochs=4', '--dry-run'], "epochs (command line): 'epochs' is set by the ladder's rungs"),
    ({'ladder': None}, ['promote'], 'no ladder: nothing to promote'),
    ({'ladder': None}, ['plan', '--rung', 'lo'], '--rung: '),
])
def test_rung_options_and_promote_refuse_bad_input_in_one_line(write_grid, tmp_path, capsys, extra, argv, message):
    grid = _grid(write_grid, **extra)
    assert cli_main(['sweep', argv[0], str(grid), *argv[1:], '--workdir', str(tmp_path / 'runs')]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / 'runs').exists()
