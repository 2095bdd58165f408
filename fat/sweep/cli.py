"""`fat sweep plan | launch | status | wait | collect | promote GRID [key=value ...]`.

Every verb starts fast: nothing on their paths imports torch or timm (the grid is validated against the torch-free
`fat.variants` and `fat.train.config`; timm is imported only for a grid that names a timm peer model), and pandas
only for collect."""
import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from submitit.core.utils import FailedJobError, FailedSubmissionError
from tqdm import tqdm

from fat.checks import InputError, IntermixedParser
from fat.preflight import check_data
from fat.rundir import ACTIVE, State

from .ceiling import loader_lines
from .cells import describe
from .cluster import CLUSTERS, default_cluster
from .ladder import plan_promotion, scoped
from .launch import LaunchReport, Sweep, launch, prepare, submits
from .progress import STALLED_AFTER_S, annotate, cell_text, grid_text
from .state import CellState, Scheduler, cell_states, summary
from .watch import watch

__all__ = ['register']

_MAX_LISTED = 20  # incomplete cells listed by collect before "... and N more"


def _print_states(states: List[CellState], as_json: bool, source: str, plan: bool = False,
                  refused: Sequence[str] = (), grid: Optional[Dict[str, Any]] = None) -> None:
    if as_json:
        cells = [dict(st.as_dict(), action='submit' if submits(st) else 'skip') if plan
                 else st.as_dict() for st in states]
        doc: Dict[str, Any] = {'cells': cells, 'summary': summary(states), 'source': source}
        if plan:
            doc['refused'] = list(refused)
        if grid is not None:
            doc['grid'] = grid
        print(json.dumps(doc, indent=1))
        return
    lines = []
    for st in states:
        action = ('submit ' if submits(st) else 'skip   ') if plan else ''
        extra = st.detail + (f' (log: {st.log})' if st.state == State.FAILED and st.log else '')
        if st.progress is not None and st.state != State.STALLED:
            extra = ' '.join(filter(None, (cell_text(st.progress), extra)))
        lines.append(f'{st.cell.id}  {st.state:<12} {action}{describe(st.cell.axes)}'
                     + (f'  [{st.job_id}]' if st.job_id else '') + (f'  on {st.placement}' if st.hosts else '')
                     + (f'  {extra}' if extra else ''))
    if grid is not None and any(st.state in ACTIVE for st in states):
        lines.append(grid_text(grid))
    print('\n'.join(lines))
    print(f'{summary(states)} (state source: {source})')


def _sweep(args: argparse.Namespace) -> Sweep:
    return prepare(args.grid, args.overrides, args.workdir)


def _refused(report: LaunchReport) -> int:
    """What the cluster would refuse (a dry run): one line each on stderr, exit status 1."""
    for line in report.refused:
        print(line, file=sys.stderr)
    return 1 if report.refused else 0


def _data_problems(sweep: Sweep) -> List[str]:
    """What the training cells' data would fail on (`fat.preflight.check_data`), once per dataset and folder."""
    if sweep.task.name != 'train':
        return []
    problems = {}
    for cell in sweep.cells:
        key = (cell.config['dataset'], cell.config.get('data_dir'))
        if key not in problems:
            try:
                check_data(cell.config)
                problems[key] = None
            except (ValueError, OSError) as e:
                problems[key] = f'data: {e}'
    return [p for p in problems.values() if p]


def _plan(args: argparse.Namespace) -> int:
    sweep = scoped(_sweep(args), args.rung)
    report = launch(sweep, args.cluster, dry_run=True, array_size_limit=args.max_array_size)
    _print_states(report.states, args.json, report.source, plan=True, refused=report.refused)
    if not args.json:
        print(report.text())
    for problem in _data_problems(sweep):  # the grid may be planned where its data is not (launch refuses it)
        print(f'warning: {problem}; launch will refuse it here', file=sys.stderr)
    if sweep.task.name == 'train':
        res = sweep.resources
        for warn, line in loader_lines((c.config for c in sweep.cells), res.gpus_per_node, res.tasks_per_node,
                                       res.values['cpus_per_task'], args.results_dir):
            if warn:
                print(f'warning: {line}', file=sys.stderr)
            elif not args.json:
                print(line)
    return _refused(report)


def _launch(args: argparse.Namespace) -> int:
    sweep = scoped(_sweep(args), args.rung)
    problems = [] if args.dry_run else _data_problems(sweep)
    if problems:  # every cell would fail in the queue: nothing is submitted
        raise InputError(problems)
    try:
        report = launch(sweep, args.cluster, dry_run=args.dry_run, snapshot=args.snapshot,
                        array_size_limit=args.max_array_size, restart_unreadable=args.restart_unreadable)
    except (FailedJobError, FailedSubmissionError) as e:  # sbatch refused (partition, account, ...): its words
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        print(f'fat sweep launch: error: sbatch failed: {lines[-1] if lines else e}', file=sys.stderr)
        return 1
    if args.dry_run and args.show_sbatch:
        for i, entry in enumerate(report.arrays):
            if entry['sbatch']:
                print(f'# --- array {i}: {entry["size"]} cells\n{entry["sbatch"]}')
    print(report.text())
    return _refused(report)


def _never_launched(states: List[CellState], args: argparse.Namespace) -> bool:
    """Whether no cell of the grid was ever launched: then status, wait and --watch say so and exit 1 alike."""
    if all(st.state == State.NOT_LAUNCHED for st in states):
        print(f'nothing launched: fat sweep launch {args.grid}', file=sys.stderr)
        return True
    return False


def _source(states: List[CellState], sched: Scheduler) -> str:
    """Where the states came from: the scheduler's answer only matters for cells launched on Slurm."""
    if any(st.cluster == 'slurm' for st in states):
        return sched.source
    return 'disk and process table (no cell launched on Slurm)'


def _status(args: argparse.Namespace) -> int:
    sweep = _sweep(args)
    use_slurm = default_cluster() == 'slurm'
    if args.watch:
        states = sweep.states(use_slurm)
        if _never_launched(states, args):
            return 1
        return watch(lambda: sweep.states(use_slurm), args.poll, args.stalled_after)
    sched = Scheduler.snapshot(use_slurm)
    states = cell_states(sweep.cells, sched)
    grid = annotate(states, args.stalled_after)
    _print_states(states, args.json, _source(states, sched), grid=grid)
    return 1 if _never_launched(states, args) else 0


def _wait(args: argparse.Namespace) -> int:
    """Poll until no cell is queued or running; exit status 0 only when every cell is DONE."""
    sweep = _sweep(args)
    states = sweep.states()
    if _never_launched(states, args):
        return 1
    if sweep.grid.ladder:  # the rungs' points that were never promoted are not waited for
        sweep = dataclasses.replace(sweep, cells=[st.cell for st in states if st.state != State.NOT_LAUNCHED])
        states = sweep.states()
    with tqdm(total=len(states), desc=f'{sweep.grid.name}: finished cells', unit='cell', disable=None) as bar:
        while True:
            ended = sum(st.state not in ACTIVE for st in states)
            bar.update(ended - bar.n)
            if ended == len(states):
                break
            time.sleep(args.poll)
            states = sweep.states()
    print(summary(states))
    return 0 if all(st.state == State.DONE for st in states) else 1


def _collect(args: argparse.Namespace) -> int:
    sweep = _sweep(args)
    states = sweep.states()
    if not sweep.grid.ladder:
        _collect_one(sweep, states, args.out)
        return 0
    if args.out.suffix == '.csv':
        raise InputError([f'--out: {sweep.grid.path} has a ladder, collected one file per rung: give a folder'])
    for rung in sweep.grid.ladder:
        _collect_one(sweep, [st for st in states if st.cell.rung == rung.name], args.out, rung.name)
    return 0


def _collect_one(sweep: Sweep, states: List[CellState], out_arg: Path, rung: Optional[str] = None) -> None:
    from .collect import collect  # pandas: only for this verb
    frame, incomplete, out, replaced = collect(sweep, states, out_arg, rung)
    if rung is not None:  # a rung's points that were never promoted to it are not missing: the summary counts them
        incomplete = [line for line in incomplete if not line.split(':', 1)[0].endswith(f' {State.NOT_LAUNCHED}')]
    for path in replaced:
        print(f'removed {path} (an earlier collection of the same cells)')
    for line in incomplete[:_MAX_LISTED]:
        print(f'incomplete: {line}', file=sys.stderr)
    if len(incomplete) > _MAX_LISTED:
        print(f'incomplete: ... and {len(incomplete) - _MAX_LISTED} more (the status column of {out})',
              file=sys.stderr)
    print(f'wrote {out}: {len(frame)} rows; {summary(states)}')


def _promote(args: argparse.Namespace) -> int:
    """Successive halving, one rung up: fat.sweep.ladder."""
    from fat.report.stats import ALPHA  # scipy and pandas: only for this verb
    sweep = _sweep(args)
    promotion = plan_promotion(sweep, sweep.states(), args.top_k)
    if promotion is None:
        print(f'the highest rung started, {sweep.grid.ladder[-1].name!r}, is the top of the ladder: nothing to promote')
        return 0
    rule = (f'the top {promotion.top_k} by mean' if promotion.top_k else
            f'the best point and every point not shown worse than it at ±{promotion.min_effect:g} (Holm, alpha '
            f'{ALPHA:g})')
    print(f'rung {promotion.lower!r} -> {promotion.upper!r} from {promotion.collection}: promoting {rule}')
    for d in promotion.decisions:
        mean = f'{d.mean:6.2f} (n {d.n})' if d.n else '     — (n 0)'
        print(f"{'promote' if d.promote else 'drop   '}  {mean}  {d.point}: {d.why}")
    report = launch(dataclasses.replace(sweep, cells=promotion.cells), args.cluster, dry_run=args.dry_run,
                    record={'promoted_from': promotion.lower})
    print(report.text())
    return 0


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}')
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float('nan')
    if not value > 0 or value == float('inf'):
        raise argparse.ArgumentTypeError(f'expected a positive number of seconds, got {text!r}')
    return value


def _guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Grid problems: one line each on stderr, exit status 2, nothing written or submitted."""
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except InputError as e:
            for line in e.problems:
                print(line, file=sys.stderr)
            return 2
    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `fat sweep plan|launch|status|wait|collect` to the `fat` command."""
    p = subparsers.add_parser(
        'sweep',
        description='Run a grid of ablation cells on Slurm (or locally) through submitit. Each cell is one '
                    'config with a content-addressed directory <workdir>/<grid>/<cell-id>; every verb is safe '
                    'to repeat.')
    verbs = p.add_subparsers(dest='verb', required=True, metavar='VERB', parser_class=IntermixedParser)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        v = verbs.add_parser(name, help=help_text, description=help_text)
        v.add_argument('grid', type=Path, metavar='GRID', help='grid file (ablations/<name>.yaml)')
        v.add_argument('overrides', nargs='*', metavar='key=value',
                       help='override a config key (changes the cells), `seeds=[0,1]`, or `slurm.<resource>`')
        v.add_argument('--workdir', type=Path, default=None,
                       help="where cell directories go (default: the grid's `workdir`, else runs/)")
        v.set_defaults(func=_guarded(fn))
        return v

    def rung_option(v: argparse.ArgumentParser) -> None:
        v.add_argument('--rung', metavar='NAME',
                       help="a ladder grid: every point at this rung (default: the first rung, and the cells of higher "
                            "rungs started before)")

    v = add('plan', _plan, 'list the cells, their states and what `launch` would do; on Slurm, also what the '
                           'cluster would refuse (the partition\'s limits and nodes; exit status 1)')
    v.add_argument('--cluster', choices=CLUSTERS, help='default: slurm when Slurm is installed, else local')
    v.add_argument('--max-array-size', type=_positive, help="cap arrays below the cluster's MaxArraySize")
    v.add_argument('--json', action='store_true', help='one JSON document')
    v.add_argument('--results-dir', type=Path, default=Path('results'),
                   help='where the loader figures (loader-*.csv) and GPU training rates (bench-train-*-cu*.csv) are '
                        'read from, to say whether the loaders can feed the GPUs (default: results)')
    rung_option(v)

    v = add('launch', _launch, 'submit the cells that are neither finished nor queued, as job arrays; '
                               'returns at once (except --cluster debug, which runs them in this process)')
    v.add_argument('--cluster', choices=CLUSTERS, help='default: slurm when Slurm is installed, else local')
    v.add_argument('--dry-run', action='store_true', help='plan the arrays without writing or submitting')
    v.add_argument('--show-sbatch', action='store_true', help='with --dry-run: print the sbatch scripts')
    v.add_argument('--snapshot', action='store_true',
                   help='run from a snapshot of the code (RsyncSnapshot): later edits do not reach queued jobs')
    v.add_argument('--max-array-size', type=_positive, help="cap arrays below the cluster's MaxArraySize")
    v.add_argument('--restart-unreadable', action='store_true',
                   help='cells that failed because none of their checkpoints loads: set those aside (renamed '
                        '*.unreadable-<time>.pt) and start the cells again from step 0 (without it: skipped)')
    rung_option(v)

    v = add('status', _status, 'state of every cell (DONE, DIVERGED, FAILED, RUNNING, STALLED, REQUEUED, PENDING, '
                               'NOT_LAUNCHED), the progress and ETA of running cells, the grid\'s expected finish')
    shown = v.add_mutually_exclusive_group()
    shown.add_argument('--json', action='store_true', help='one JSON document')
    shown.add_argument('--watch', action='store_true',
                       help='refresh until no cell is queued or running (bars on a terminal, else lines); '
                            'exit status as `fat sweep wait`')
    v.add_argument('--poll', type=_seconds, default=10., help='with --watch: seconds between looks (default: 10)')
    v.add_argument('--stalled-after', type=_seconds, default=STALLED_AFTER_S, metavar='SECONDS',
                   help='a running cell whose progress has not changed for this long (and for 10 of its steps) is '
                        f'STALLED (default: {STALLED_AFTER_S:.0f})')

    v = add('wait', _wait, 'wait until no cell is queued or running (exit status 0 when all are DONE)')
    v.add_argument('--poll', type=_positive, default=10, help='seconds between looks (default: 10)')

    v = add('collect', _collect, 'one row per cell (finished or not) into results/<grid>-<environment>.csv')
    v.add_argument('--out', type=Path, default=Path('results'),
                   help='output CSV file, or a folder to write <grid>-<environment>.csv into (default: results; '
                        'the environment is where the cells ran, e.g. pt2.14-cpu-amd_epyc, or mixed)')

    v = add('promote', _promote, 'a ladder grid (successive halving): submit at the next rung the points the '
                                 'collected statistics of the highest rung started cannot yet exclude, saying why '
                                 'for each; refuses until that rung has ended and is collected')
    v.add_argument('--top-k', type=_positive, metavar='K', help='promote the K best points by mean instead')
    v.add_argument('--cluster', choices=CLUSTERS, help='default: slurm when Slurm is installed, else local')
    v.add_argument('--dry-run', action='store_true', help='say what would be promoted; submit nothing')
