"""`fat bench` and the inference re-parameterisation (fat.models.fuse): exact fusion for every FASA variant, records,
CSV naming and merging, OOM back-off, refusals. No timing thresholds: the speed targets live in
benchmarks/vs_official.py."""
import csv
import json
import re
import resource
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn as nn

import fat  # noqa: F401  (registers the models)
from fat import bench
from fat.cli import main
from fat.models import FASA_VARIANTS
from fat.models.fuse import FusedFasa, FusedFatBlock, FusedFatStage, fuse_model

# retries=0: these tests are not about contention (tests/test_contention.py is); a loaded test machine must not slow
# them down with re-timings
TINY = dict(img_size=32, batch_size=2, num_warmup=1, num_iters=2, retries=0)


def _perturbed(name: str = 'fat_b0', **kwargs) -> nn.Module:
    """A model whose norms and BatchNorm statistics are far from their init, so that folding them is exercised."""
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.)
    return model.eval()


@pytest.mark.parametrize('preset', list(FASA_VARIANTS))
def test_fusion_is_exact_for_every_preset(preset):
    model = _perturbed(fasa=preset)
    fused = fuse_model(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), 'the original must be left as it was'
    x = torch.randn(1, 3, 80, 112)  # not a multiple of 32: exercises the ceil-mode K/V grids
    with torch.no_grad():
        expected = model(x)
    # with autograd on, conv + activation run as two ops; without, as one oneDNN primitive on CPU
    torch.testing.assert_close(fused(x), expected, rtol=0, atol=1e-5)
    with torch.no_grad():
        fused = fused.to(memory_format=torch.channels_last)
        torch.testing.assert_close(fused(x.contiguous(memory_format=torch.channels_last)), expected, rtol=0, atol=1e-5)


def test_compiled_inference_is_frozen_and_exact():
    """The best mode (fused, channels_last, inductor with freezing) computes the model: one real compile, ~15 s."""
    model = _perturbed('fat_proxy')
    x = torch.randn(4, 1, 48, 48)
    with torch.no_grad():
        expected = model(x)
    compiled = bench.prepare(model, 'infer', torch.device('cpu'), compile='inductor')
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        got = compiled(x)
        with torch.profiler.profile() as prof:
            compiled(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    ops = {e.key for e in prof.key_averages()}
    # frozen: every convolution runs on weights pre-packed for oneDNN, none through the unpacked aten op
    assert 'mkldnn::_convolution_pointwise' in ops and 'aten::mkldnn_convolution' not in ops, sorted(ops)
    # FASA's global branch runs as the native kernel inside the compiled graph (where it could be built)
    assert ('fat::fasa_attention' in ops) == fat.models.native.load(), sorted(ops)
    assert torch._inductor.config.freezing is False  # set around the calls only, not for the process


def test_fusion_matches_the_official_fixture(official_fixture):
    model = timm.create_model('fat_b0', drop_path_rate=0.)
    model.load_state_dict(fat.models.checkpoint_filter_fn(official_fixture['state_dict'], model), strict=True)
    fused = fuse_model(model)
    with torch.no_grad():
        for name, x in official_fixture['inputs'].items():
            torch.testing.assert_close(fused(x), official_fixture['eval_logits'][name], rtol=0, atol=1e-4)
        for m in fused.modules():
            if isinstance(m, FusedFasa):
                m.fused_attn = False  # the explicit attention path
        x = official_fixture['inputs']['96x96_b2']
        torch.testing.assert_close(fused(x), official_fixture['eval_logits']['96x96_b2'], rtol=0, atol=1e-4)


def test_fused_blocks_script_and_models_keep_feature_taps():
    model = _perturbed()
    block = model.stages[0].blocks[-1]  # the downsampling block: every fused layer type
    x = torch.randn(1, 32, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(FusedFatBlock(block))(x), block(x), rtol=0, atol=1e-5)
        x = torch.randn(1, 3, 64, 64)
        torch.testing.assert_close(
            fuse_model(model).forward_intermediates(x)[1], model.forward_intermediates(x)[1], rtol=0, atol=1e-5)
    features = timm.create_model('fat_b0', features_only=True).eval()
    fused_features = fuse_model(features)
    assert any(isinstance(m, FusedFatBlock) for m in fused_features.modules())
    with torch.no_grad():
        torch.testing.assert_close(fused_features(x), features(x), rtol=0, atol=1e-5)


def test_fused_stages_chunk_large_batches_with_the_same_result():
    model = _perturbed('fat_proxy')
    fused = fuse_model(model).to(memory_format=torch.channels_last)
    stage = fused.stages[0]
    assert isinstance(stage, FusedFatStage) and stage.budget >= 2 ** 20  # half the last-level cache
    x = torch.randn(5, 1, 48, 48).contiguous(memory_format=torch.channels_last)
    calls = []
    stage.blocks[0].register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    with torch.no_grad():
        whole = fused(x)
        assert calls == [5]
        stage.budget = 3 * stage.hidden * 12 * 12 * 4  # the hidden map of three images (12 x 12 after the stem)
        torch.testing.assert_close(fused(x), whole, rtol=0, atol=0)
        torch.testing.assert_close(fused(x), model(x), rtol=0, atol=1e-5)
    assert calls[1:3] == [3, 2]


def test_vs_official_skips_cleanly_without_the_official_code(benchmark_script, tmp_path, capsys):
    assert benchmark_script('vs_official').main(['--official', str(tmp_path)]) == 0
    assert 'official FAT code not found' in capsys.readouterr().out


def test_fuse_model_reparameterizes_timm_peers():
    torch.manual_seed(0)
    model = timm.create_model('repvit_m0_9').eval()
    fused = fuse_model(model)
    assert sum(p.numel() for p in fused.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(fused(x), expected, rtol=0, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize('mode', bench.MODES)
def test_run_returns_a_complete_record(mode):
    record = bench.run('fat_b0', mode, num_classes=10, **TINY)
    assert tuple(record) == bench.FIELDS
    assert record['mode'] == mode and record['model'] == 'fat_b0'
    assert record['samples_per_sec'] > 0 and record['step_time_min_ms'] <= record['step_time_ms']
    assert record['step_time_ms'] <= record['step_time_max_ms'] and record['step_time_iqr_ms'] >= 0
    assert record['batch_size'] == record['requested_batch_size'] == 2 and record['img_size'] == 32
    assert record['reparam'] is (mode == 'infer') and record['channels_last'] is True
    assert record['native_kernels'] is (mode == 'infer' and fat.models.native.load())
    assert record['malloc'] == 'default' and isinstance(record['page_faults_per_step'], int)
    assert record['opt'] == ('adamw' if mode == 'train' else '')
    assert record['model_kwargs'] == '{"num_classes": 10}'
    assert record['param_count'] == sum(p.numel() for p in timm.create_model('fat_b0', num_classes=10).parameters())
    assert record['device'] == 'cpu' and record['device_name'] and record['num_threads'] == torch.get_num_threads()
    assert record['torch'] == torch.__version__ and record['timm'] == timm.__version__


def test_run_any_timm_model_in_amp_bf16_nchw():
    record = bench.run('resnet18', precision='amp_bf16', channels_last=False, **TINY)
    assert record['precision'] == 'amp_bf16' and record['channels_last'] is False and record['samples_per_sec'] > 0


def test_time_steps_warms_up_then_times_each_step():
    calls = []
    times = bench.time_steps(lambda: calls.append(1), num_iters=3, num_warmup=2)
    assert len(calls) == 5 and len(times) == 3 and all(t >= 0 for t in times)
    summary = bench.summarize([0.1, 0.2, 0.4], batch_size=8)
    assert summary['samples_per_sec'] == 40. and summary['step_time_ms'] == 200.
    assert summary['step_time_min_ms'] == 100. and summary['step_time_max_ms'] == 400.


def test_out_of_memory_backs_off_the_batch_size(monkeypatch):
    contender = bench._Contender
    tried = []

    def fake(model_name, mode, batch_size, *args):
        tried.append(batch_size)
        if batch_size > 4:
            raise torch.cuda.OutOfMemoryError('CUDA out of memory')
        return contender(model_name, mode, batch_size, *args)

    monkeypatch.setattr(bench, '_Contender', fake)
    record = bench.run('fat_b0', img_size=32, batch_size=16, num_warmup=0, num_iters=1, retries=0)
    assert tried == [16, 12, 8, 6, 4]  # timm's decay_batch_step
    assert record['batch_size'] == 4 and record['requested_batch_size'] == 16
    tried.clear()
    with pytest.raises(torch.cuda.OutOfMemoryError):
        bench.run('fat_b0', img_size=32, batch_size=16, num_warmup=0, num_iters=1, retry=False, retries=0)
    assert tried == [16]


def _record(**kwargs):
    return dict(dict(model='fat_b0', mode='infer', precision='fp32', channels_last=True, compile='', device='cpu',
                     device_name='AMD EPYC 7763 64-Core Processor', torch='2.14.1+cu130'), **kwargs)


def test_results_file_names_encode_the_environment():
    expected = 'results/bench-infer-fp32-nhwc-pt2.14-cpu-amd_epyc_7763_64_core.csv'
    assert bench.results_path(_record()).as_posix() == expected
    path = bench.results_path(_record(mode='train', precision='amp_bf16', channels_last=False, compile='inductor',
                                      device_name='Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz'), 'out')
    assert path.as_posix() == 'out/bench-train-amp_bf16-nchw-pt2.14-cpu-intel_xeon_platinum_8375c-dynamo.csv'
    cuda = bench.results_path(_record(device='cuda', device_name='NVIDIA H100 80GB HBM3', precision='amp_fp16'))
    assert re.fullmatch(r'bench-infer-amp_fp16-nhwc-pt2\.14-cu\d*-h100_80gb_hbm3\.csv', cuda.name)


def test_cli_writes_and_merges_the_csv(tmp_path, capsys):
    args = ['bench', 'fat_b0', '--img-size', '32', '--batch-size', '1', '2', '--warmup', '0', '--iters', '1',
            '--results-dir', str(tmp_path), '--no-progress', '--model-kwargs', 'num_classes=10', '--retries', '0']
    assert main(args) == 0
    assert main(args[:5] + ['2'] + args[7:] + ['--no-reparam']) == 0
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and re.fullmatch(r'bench-infer-fp32-nhwc-pt\d+\.\d+-cpu-\w+\.csv', files[0].name)
    with files[0].open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == bench.FIELDS
    # the second command added a row (no re-parameterisation); re-running the first replaced its two rows
    assert main(args) == 0
    with files[0].open() as f:
        rows = list(csv.DictReader(f))
    assert sorted((r['batch_size'], r['reparam']) for r in rows) == [('1', 'True'), ('2', 'False'), ('2', 'True')]
    assert all(r['model_kwargs'] == '{"num_classes": 10}' for r in rows)
    assert 'samples/s' in capsys.readouterr().out


def test_an_ad_hoc_run_never_replaces_the_committed_comparison(tmp_path, monkeypatch):
    """`fat bench` without --results-dir writes under runs/bench/, not results/ (where it replaced a committed row
    of the speed comparison, which `fat speed` writes)."""
    monkeypatch.chdir(tmp_path)
    assert main(['bench', 'fat_b0', '--img-size', '32', '--batch-size', '1', '--warmup', '0', '--iters', '1',
                 '--no-progress', '--retries', '0']) == 0
    assert len(list((tmp_path / 'runs' / 'bench').glob('bench-infer-*.csv'))) == 1
    assert not (tmp_path / 'results').exists()


def test_tuned_malloc_stops_the_page_faults_of_large_reallocations(tmp_path):
    """In a fresh process (the setting lasts for the process): two 24 MiB tensors allocated and freed ten times fault
    again and again with glibc's defaults and not at all once tuned and warm; `fat bench --tuned-malloc` records
    the setting."""
    probe = (
        'import resource, torch; from fat import bench\n'
        'def faults():\n'
        '    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n'
        '    for _ in range(10):\n'
        '        a, b = torch.ones(6 << 20), torch.ones(6 << 20)\n'
        '        del a, b\n'
        '    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before\n'
        'print(faults(), bench.tune_malloc(), faults(), faults())\n')
    default, tuned, _, warm = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True,
                                             check=True).stdout.split()
    pages = 2 * (24 << 20) // resource.getpagesize()  # one round's two tensors
    # glibc's default trims the heap top after some rounds and not others (30,000-120,000 faults here)
    assert tuned == 'True' and int(default) > pages and int(warm) < pages // 10, (default, warm)
    subprocess.run([sys.executable, '-m', 'fat.cli', 'bench', 'fat_b0', '--img-size', '32', '--batch-size', '2',
                    '--warmup', '1', '--iters', '2', '--no-progress', '--tuned-malloc', '--results-dir', str(tmp_path),
                    '--retries', '0',
                    '--model-kwargs', 'num_classes=10'], check=True, capture_output=True)
    with next(tmp_path.iterdir()).open() as f:
        assert [r['malloc'] for r in csv.DictReader(f)] == ['tuned']


def test_results_written_before_a_key_column_existed_are_replaced(tmp_path):
    path = tmp_path / 'bench.csv'
    old_fields = [k for k in bench.FIELDS if k != 'native_kernels']  # the header before that column existed
    record = _record(model='fat_b0', samples_per_sec=1.0, native_kernels=True)
    other = dict(record, model='fat_b1')
    with path.open('w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=old_fields, extrasaction='ignore')
        writer.writeheader()
        writer.writerows([record, other])
    bench.write_results([dict(record, samples_per_sec=2.0)], path)
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r['model'], r['samples_per_sec'], r['native_kernels']) for r in rows] == [
        ('fat_b1', '1.0', ''), ('fat_b0', '2.0', 'True')]


@pytest.mark.parametrize('args, message', [
    (['nope_model'], "unknown model 'nope_model'"),
    (['fat_b0', '--precision', 'fp16'], "unknown precision 'fp16'"),
    (['fat_b0', '--mode', 'training'], "unknown mode 'training'"),
    (['fat_b0', '--batch-size', '0'], 'batch size must be >= 1'),
    (['fat_b0', '--iters', '0'], 'num_iters must be >= 1'),
    (['fat_b0', '--img-size', '0'], 'image size must be >= 1'),
    (['fat_b0', '--fasa', 'nope'], "unknown variant 'nope'"),
    (['resnet18', '--fasa', 'fasa'], 'bad model arguments'),
    (['fat_b*x'], "no registered model matches 'fat_b*x'"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    assert main(['bench', *args, '--no-save', '--no-progress']) == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason='CUDA is available here')
def test_cuda_asked_for_without_cuda_is_refused():
    with pytest.raises(ValueError, match='CUDA is not available'):
        bench.run('fat_b0', device='cuda', **TINY)


def test_every_compiled_size_is_traced_with_static_shapes():
    """Defect: dynamo's cache survived from one batch size (or out-of-memory retry) to the next, so the next size was
    timed on a graph with a dynamic batch dimension. A recording backend sees what each compile traced."""
    from torch._dynamo import register_backend
    traced = []

    @register_backend(name='fat_test_record_shapes')
    def record(gm, example_inputs):
        traced.append(any(isinstance(t, torch.SymInt) or isinstance(t, torch.Tensor) and any(
            isinstance(s, torch.SymInt) for s in t.shape) for t in example_inputs))
        return gm.forward

    for batch_size in (2, 3):
        bench.run('resnet10t', batch_size=batch_size, img_size=32, compile='fat_test_record_shapes', num_warmup=1,
                  num_iters=1, reparam=False, retries=0)
    assert traced == [False, False]


def test_timm_reparameterize_model_applies_fat_fusion():
    """FAT's stem, stages and blocks follow timm's convention (`fuse()`), so timm's own `reparameterize_model` (and
    the --reparam flag of timm's scripts) fuses FAT: before, it returned FAT unchanged (313 modules both times)."""
    from timm.utils import reparameterize_model
    model = _perturbed()
    fused = reparameterize_model(model)
    assert len(list(fused.modules())) < len(list(model.modules()))
    assert all(isinstance(s, FusedFatStage) for s in fused.stages)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(fused(x), expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def test_every_setting_prepares_fat_and_a_peer_alike(monkeypatch, capsys):
    """`fat bench MODEL... --setting S` puts FAT and a peer in the same state: the same record options, and in
    `best` both reach torch.compile as built (BatchNorms still there, for freezing to fold), in channels_last. A
    recording backend stands in for inductor (the real compile is the next test)."""
    from torch._dynamo import register_backend
    traced = []

    @register_backend(name='fat_test_record_graph')
    def record(gm, example_inputs):
        image = [t for t in example_inputs if isinstance(t, torch.Tensor) and tuple(t.shape) == (1, 3, 32, 32)]
        traced.append((sum('batch_norm' in str(n.target) for n in gm.graph.nodes),
                       bool(image) and image[0].is_contiguous(memory_format=torch.channels_last)))
        return gm.forward

    monkeypatch.setitem(bench.SETTINGS, 'best', dict(bench.SETTINGS['best'], compile='fat_test_record_graph'))
    assert main(['bench', 'fat_b0', 'test_resnet', '--setting', *bench.SETTINGS, '--img-size', '32', '--batch-size',
                 '1', '--warmup', '0', '--iters', '1', '--json', '--no-save', '--no-progress', '--retries', '0']) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    options = ('setting', 'channels_last', 'compile', 'reparam', 'precision', 'batch_size', 'num_threads')
    by_setting = {}
    for r in records:
        by_setting.setdefault(r['setting'], []).append(tuple(r[k] for k in options))
    assert sorted(by_setting) == sorted(bench.SETTINGS)
    assert all(len(v) == 2 and v[0] == v[1] for v in by_setting.values()), by_setting
    assert by_setting['as_built'][0][1:4] == (False, '', False)
    assert by_setting['best'][0][1:4] == (True, 'fat_test_record_graph', 'peers')
    assert by_setting['fused'][0][1:4] == (True, '', True)
    assert len(traced) >= 2 and traced[0][0] > 0 and all(channels_last for _, channels_last in traced), traced


def test_best_setting_folds_a_peers_batchnorm():
    """`best` compiles with inductor's freezing: the graph inductor lowers has no BatchNorm arithmetic left (folded
    into the convolutions), and the output is the model's. One real compile of timm's tiny test ResNet."""
    import torch._inductor.config as inductor_config
    graphs = []
    torch.manual_seed(0)
    model = _perturbed('test_resnet')
    compiled = bench.prepare(model, 'infer', torch.device('cpu'), **bench.SETTINGS['best'])
    x = torch.randn(1, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with inductor_config.patch(post_grad_custom_pre_pass=lambda g: graphs.append(
            {str(n.target) for n in g.nodes if n.op == 'call_function'})), torch.inference_mode():
        got = compiled(x)
    with torch.no_grad():
        expected = _perturbed('test_resnet')(x)
    assert graphs and not any('rsqrt' in t or 'aten.mul' in t or 'batch_norm' in t for t in graphs[0]), graphs[0]
    assert any('convolution' in t for t in graphs[0])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4 * expected.abs().max().item())


def test_summarize_gives_timms_statistic_and_the_spread_across_rounds():
    rounds = [[0.1, 0.1, 0.4], [0.2, 0.2, 0.2]]
    s = bench.summarize([t for r in rounds for t in r], 2, rounds)
    assert s['samples_per_sec'] == round(2 / 0.2, 2)  # the median step
    assert s['samples_per_sec_mean'] == round(2 * 6 / 1.2, 2)  # timm: samples / total time
    assert s['round_samples_per_sec'] == '10.0;10.0' and s['spread_pct'] == 0 and s['rounds'] == 2
    s = bench.summarize([0.1, 0.2], 1, [[0.1], [0.2]])
    assert s['round_samples_per_sec'] == '10.0;5.0' and s['spread_pct'] == round(100 * 5 / 7.5, 1)


def test_compare_times_contenders_round_robin():
    lines = []
    records = bench.compare([dict(model='fat_b0', setting='as_built'), dict(model='test_resnet', setting='as_built')],
                            rounds=2, img_size=32, batch_size=1, num_warmup=0, num_iters=2, retries=0,
                            log=lines.append)
    timed = [line.split(':')[0] for line in lines if line.startswith('round')]
    assert timed == ['round 1/2 fat_b0 infer as_built b1', 'round 1/2 test_resnet infer as_built b1',
                     'round 2/2 test_resnet infer as_built b1', 'round 2/2 fat_b0 infer as_built b1']
    assert [r['model'] for r in records] == ['fat_b0', 'test_resnet']
    assert all(r['rounds'] == 2 and len(r['round_samples_per_sec'].split(';')) == 2 for r in records)
