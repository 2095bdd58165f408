"""`fat report` pieces: the claims against the spec (section 7), NOT FOUND never becoming a number, the peer set,
the ablation statistics on hand-made grids, benchmark files, missing and corrupt inputs, refused definitions."""
import json
import shutil
from pathlib import Path
from typing import Dict, List

import pandas as pd
import pytest

from fat.cli import main
from fat.report import build_report, load_analysis, load_measurements
from fat.report.tables import DASH, Table, build_tables

REPO = Path(__file__).resolve().parents[1]
ANALYSIS = REPO / 'analysis'
PINS = REPO / 'results' / 'complexity-pins.json'

# qhfan/FAT classification/README.md and qhfan/RMT segmentation/README.md (docs/sources.md), as printed there
SPEC_IMAGENET = {'FAT-B0': ('4.5', '0.7', '77.6'), 'FAT-B1': ('7.8', '1.2', '80.1'),
                 'FAT-B2': ('13.5', '2.0', '81.9'), 'FAT-B3': ('29', '4.4', '83.6')}
SPEC_ADE20K = [('FAT-B0', 'Semantic FPN', '8.4', '25.0', '41.5', DASH),
               ('FAT-B1', 'Semantic FPN', '11.6', '27.5', '42.9', DASH),
               ('FAT-B2', 'Semantic FPN', '17.2', '32.2', '45.4', DASH),
               ('FAT-B3', 'Semantic FPN', '32.9', '179', '48.9', DASH),
               ('FAT-B3', 'UperNet', '59', '936', '49.6', '50.7')]


def _tables(results: Path) -> Dict[str, Table]:
    a = load_analysis(ANALYSIS)
    return {t.name: t for t in build_tables(a, load_measurements(results, PINS))}


def _bench(path: Path, rows: List[dict]) -> None:
    """A results file of `fat bench` (fat/bench.py FIELDS, the columns the report reads)."""
    base = dict(mode='infer', step_time_ms=100., step_time_iqr_ms=1., batch_size=16, img_size=224,
                model_kwargs='{}', precision='fp32', channels_last=True, compile='', reparam=True, device='cpu',
                device_name='Test CPU', num_threads=2, torch='2.14.1', timm='1.0.31')
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{**base, **r} for r in rows]).to_csv(path, index=False)


def test_claims_are_the_spec_numbers(tmp_path: Path):
    tables = _tables(tmp_path)
    imagenet = tables['imagenet'].display.set_index('Model')
    for label, (params, macs, top1) in SPEC_IMAGENET.items():
        row = imagenet.loc[label]
        assert (row['Params (M) claimed'], row['GMACs claimed (convention)'], row['Top-1 (%) claimed']) == (
            params, f'{macs} (paper)', top1)
    ade = tables['ade20k'].display
    got = list(ade[['Backbone', 'Decoder', 'Params (M)', 'GMACs (mmcv)', 'mIoU (%)', 'MS mIoU (%)']].itertuples(
        index=False, name=None))
    assert got == SPEC_ADE20K
    assert list(ade['FLOPs input']) == ['512×512', '512×512', '512×512', '512×2048', DASH]


def test_not_found_is_never_a_number(tmp_path: Path):
    a = load_analysis(ANALYSIS)
    fat_claims = a.claims[a.claims['model'].str.startswith('fat_')]
    assert fat_claims['throughput'].isna().all()  # FAT's throughput: not found (docs/sources.md)
    tables = _tables(tmp_path)
    imagenet = tables['imagenet'].display.set_index('Model')
    measured = ['img/s (measured)', 'Top-1 (%) measured', 'Δ top-1']
    assert (imagenet.loc[list(SPEC_IMAGENET), measured] == DASH).all().all()
    speed = tables['speed'].display.set_index('Model')
    assert (speed.loc[list(SPEC_IMAGENET), ['P1 img/s', 'P2 img/s']] == DASH).all().all()
    assert any('Not found' in n and 'throughput' in n for n in tables['imagenet'].notes)
    assert any('Not found' in n and 'ablation' in n for n in tables['ablation'].notes)


def test_peers_are_imagenet_1k_only_and_cite_timm():
    a = load_analysis(ANALYSIS)
    peers = a.claims[a.claims['file'] == 'claims/peers_timm.yaml']
    tags = peers['tag'].dropna()
    assert len(tags) == len(a.tables['imagenet']['peers'])
    for tag in tags:  # no extra pretraining data, no distillation, no timm re-training recipe
        assert tag.endswith('in1k') and not any(t in tag for t in ('dist', 'in12k', 'in22k', 'usi', 'ssl', 'ig1b'))
    for key in peers['source'].unique():
        assert 'pytorch-image-models/blob/aa4b5850c154/results/' in a.sources[key]['url']
    for model in a.tables['imagenet']['peers']:  # each peer has its top-1 at its own evaluation resolution
        assert a.claimed(model, 'imagenet-1k', 'top1', a.models[model]['img_size']) is not None


def test_bench_files_fill_throughput_with_their_environment(tmp_path: Path):
    _bench(tmp_path / 'bench-infer-fp32-nhwc-pt2.14-cpu-test.csv', [
        dict(model='fat_b0', samples_per_sec=40.0),
        dict(model='fat_b0', samples_per_sec=99.0, model_kwargs=json.dumps({'fasa': 'global_only'})),
        dict(model='fat_b1', samples_per_sec=98.0, model_kwargs=json.dumps({'in_chans': 1})),
        dict(model='mobilevit_xs', samples_per_sec=30.0, img_size=256),
        dict(model='mobilevit_s', samples_per_sec=97.0, img_size=224),  # not its evaluation resolution
        dict(model='fat_b0', mode='train', samples_per_sec=9.0)])
    tables = _tables(tmp_path)
    imagenet = tables['imagenet'].display.set_index('Model')['img/s (measured)']
    assert (imagenet['FAT-B0'], imagenet['FAT-B1'], imagenet['MobileViT-XS'], imagenet['MobileViT-S']) == (
        '40.0', DASH, '30.0', DASH)
    speed = tables['speed']
    assert speed.display.set_index('Model').loc['FAT-B0', 'M1 img/s'] == '40.0'
    env = 'Test CPU (cpu), fp32, nhwc, reparameterized, batch 16, 2 threads, torch 2.14.1, median step'
    assert speed.meta['envs']['M1'] == env and any(n.startswith(f'M1: {env}') for n in speed.notes)
    assert 'M2 img/s' not in speed.display.columns  # the train row is not an inference environment


def test_a_speed_run_fills_one_column_for_fat_and_peers_with_timms_statistic_and_spread(tmp_path: Path):
    """`fat speed`'s rows: one column per setting, timm's statistic (mean step) shown with the range over rounds."""
    run = dict(setting='as_built', channels_last=False, reparam=False, batch_size=1, num_threads=1, rounds=3,
               num_iters=20)
    _bench(tmp_path / 'bench-infer-fp32-nchw-pt2.14-cpu-test.csv', [
        dict(run, model='fat_b0', samples_per_sec=5.5, samples_per_sec_mean=5.0, spread_pct=4.2,
             round_samples_per_sec='4.9;5.1;5.0'),
        dict(run, model='deit_tiny_patch16_224', samples_per_sec=9.0, samples_per_sec_mean=8.0, spread_pct=1.0),
        dict(run, model='fat_b0', setting='best', compile='inductor', reparam='peers', channels_last=True,
             samples_per_sec=7.0, samples_per_sec_mean=7.0, spread_pct=0.4)])
    speed = _tables(tmp_path)['speed']
    display = speed.display.set_index('Model')
    assert list(display.loc[['FAT-B0', 'DeiT-Ti'], 'M1 img/s']) == ['5.00 (4 %)', '8.00 (1 %)']
    assert list(display.loc[['FAT-B0', 'DeiT-Ti'], 'M2 img/s']) == ['7.00 (0 %)', DASH]
    assert speed.meta['envs']['M1'] == ("setting as_built, Test CPU (cpu), fp32, nchw, batch 1, 1 thread, "
                                        "torch 2.14.1, timm's statistic (mean step), 3 rounds of 20 steps")
    assert 'peers reparameterized' in speed.meta['envs']['M2'] and 'torch.compile inductor' in speed.meta['envs']['M2']
    assert any('range of timm' in n for n in speed.notes)
    assert speed.meta['ranges']['M1'] == {'fat_b0': (4.9, 5.1)}  # the figure draws it as a bar through the point


def test_collected_bench_and_flops_grids_are_not_ablations(tmp_path: Path):
    """A grid of `bench` cells feeds the speed table; neither it nor a `flops` grid is an ablation table."""
    _bench(tmp_path / 'speed.csv', [dict(model='fat_b1', samples_per_sec=20.0, grid='speed', cell='a', status='DONE'),
                                    dict(model='fat_b2', samples_per_sec=9.0, grid='speed', cell='b', status='FAILED')])
    pd.DataFrame(dict(grid='flops', cell=['a', 'b'], model='fat_b0', fasa=['fasa', 'global_only'], status='DONE',
                      params=1, macs_paper=2, macs_fvcore=3)).to_csv(tmp_path / 'flops.csv', index=False)
    tables = _tables(tmp_path)
    speed = tables['speed'].display.set_index('Model')
    assert (speed.loc['FAT-B1', 'M1 img/s'], speed.loc['FAT-B2', 'M1 img/s']) == ('20.0', DASH)
    assert 'ablation' in tables and not any(name.startswith('ablation-') for name in tables)


def test_missing_and_corrupt_inputs_leave_notes_not_crashes(tmp_path: Path):
    results = tmp_path / 'results'
    results.mkdir()
    (results / 'broken.csv').write_text('a,b\n1,2,3,4\n"unterminated\n')
    (results / 'other.csv').write_text('x,y\n1,2\n')
    (results / 'tables').mkdir()
    (results / 'tables' / 'ablation-gone.md').write_text('a grid that is no longer collected')
    written, stale, problems = build_report(results, ANALYSIS, tmp_path / 'no-pins.json')
    assert stale == [results / 'tables' / 'ablation-gone.md'] and not stale[0].exists() and problems == {}
    names = {p.relative_to(results).as_posix() for p in written}
    assert {'tables/imagenet.md', 'tables/ablation.md', 'tables/speed.csv', 'report.md',
            'figures/accuracy_vs_macs.png', 'figures/throughput_vs_accuracy.pdf'} <= names
    imagenet = (results / 'tables' / 'imagenet.md').read_text()
    assert 'no collected runs' in imagenet and 'no complexity records found' in imagenet
    assert 'No collected training grid' in (results / 'tables' / 'ablation.md').read_text()
    index = (results / 'report.md').read_text()
    assert 'broken.csv: unreadable' in index
    assert 'other.csv: neither a collected grid' in index


def _analysis_copy(tmp_path: Path) -> Path:
    copy = tmp_path / 'analysis'
    shutil.copytree(ANALYSIS, copy)
    return copy


@pytest.mark.parametrize('edit, message', [
    (('source: fat_readme, img_size: 224, params_m: 4.5', 'source: fat_readmee, img_size: 224, params_m: 4.5'),
     "source 'fat_readmee' is not defined"),
    (('macs_g: 0.7, macs_convention: paper, top1: 77.6}\n\n', 'macs_g: 0.7, macs_convention: paper, top1: 77.7}\n\n'),
     'claims disagree on top1 of fat_b0'),
    (('macs_convention: paper, top1: 80.1', 'macs_convention: papr, top1: 80.1'), "unknown macs_convention 'papr'"),
    (('top1: 81.9}', 'top1: high}'), 'top1 must be a number'),
])
def test_bad_claims_are_refused_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, edit, message):
    copy = _analysis_copy(tmp_path)
    path = copy / 'claims' / 'fat.yaml'
    text = path.read_text()
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1], 1))
    code = main(['report', '--results', str(tmp_path / 'results'), '--analysis', str(copy), '--pins', str(PINS)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err and err.startswith('fat report: error:')


def test_missing_analysis_directory_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main(['report', '--results', str(tmp_path), '--analysis', str(tmp_path / 'nowhere')]) == 2
    assert 'no analysis definitions' in capsys.readouterr().err
