"""Checkpoints read without running code: torch's weights-only unpickler, a planted checkpoint refused before it is
unpickled, an old checkpoint (written by the code before this format) resuming bit-identically, and a run whose
checkpoints all fail to load ending FAILED instead of starting over them."""
import gzip
import json
import os
from pathlib import Path

import pytest
import torch

from fat.cli import main as cli_main
from fat.train import PRESETS, main
from fat.train.checkpoint import read_checkpoint
from fat.train.cli import parse_override

FIXTURE = Path(__file__).parent / 'data' / 'checkpoints' / 'main-9b55ebe-step2.pt.gz'
# The fixture: checkpoint-last.pt of this run, written by fat-harness at commit 9b55ebe (NumPy's random state as an
# array, read by `torch.load(weights_only=False)`) with torch 2.14.1 on an AMD EPYC CPU, stopped by SIGTERM after
# step 2 of 8 (`fat train --preset smoke` with the keys below and checkpoint_steps=1). A tiny model keeps it small.
FIXTURE_TORCH = '2.14.1'
OLD_ARGS = ['--preset', 'smoke', 'epochs=2', 'drop_path=0.1', 'ema=true', 'checkpoint_minutes=0',
            'model_args={embed_dims: [4, 4, 8, 8], depths: [1, 1, 1, 1], num_heads: [1, 1, 2, 2]}']
OLD_RUN = dict(PRESETS['smoke'], **dict(parse_override(a) for a in OLD_ARGS[2:]))


class _Payload:
    """What an attacker plants: unpickling it runs a shell command (here: creates `marker`)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def _old_checkpoint(run: Path) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    path = run / 'checkpoint-last.pt'
    path.write_bytes(gzip.decompress(FIXTURE.read_bytes()))
    return path


def _planted(path: Path, marker: Path) -> Path:
    """A real checkpoint with its `history` replaced by the payload; the payload is checked to be live."""
    state = torch.load(_old_checkpoint(path.parent / 'donor'), weights_only=False)  # our own fixture: trusted
    state['history'] = [_Payload(marker)]
    torch.save(state, path)
    torch.load(path, weights_only=False)  # the old resume: the payload runs
    assert marker.exists(), 'the planted payload is not live'
    marker.unlink()
    return path


def test_new_checkpoints_need_nothing_beyond_tensors_and_plain_values(tmp_path):
    out = tmp_path / 'run'
    assert main(dict(OLD_RUN, output_dir=str(out)))['status'] == 'done'
    for name in ('checkpoint-last.pt', 'checkpoint-prev.pt', 'checkpoint-best.pt'):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(out / name) == [], name  # no allowlist needed
        torch.load(out / name, weights_only=True)


def test_an_old_checkpoint_resumes_bit_identically_to_an_uninterrupted_run(tmp_path):
    if torch.__version__.split('+')[0] != FIXTURE_TORCH:
        pytest.skip(f'the fixture was written with torch {FIXTURE_TORCH}: another version computes other bits')
    old, ref = tmp_path / 'old', tmp_path / 'ref'
    _old_checkpoint(old)
    with pytest.raises(Exception, match='numpy'):  # it is the old format: plain weights-only loading refuses it
        torch.load(old / 'checkpoint-last.pt', weights_only=True)
    resumed = main(dict(OLD_RUN, output_dir=str(old)))
    uninterrupted = main(dict(OLD_RUN, output_dir=str(ref)))
    assert resumed['status'] == 'done' and resumed['steps'] == 8
    env = json.loads((old / 'environment.json').read_text())
    assert env[0]['resumed_from'] == dict(epoch=0, step_in_epoch=2, global_step=2)
    keys = ('final_top1', 'final_top5', 'best_top1', 'final_ema_top1', 'final_ema_top5', 'epochs', 'steps')
    assert {k: resumed[k] for k in keys} == {k: uninterrupted[k] for k in keys}
    logs = [[{k: v for k, v in json.loads(line).items() if 'seconds' not in k and 'per_s' not in k}
             for line in (d / 'log.jsonl').read_text().splitlines()] for d in (old, ref)]
    assert logs[0] == logs[1] and len(logs[0]) == 2
    a, b = (read_checkpoint(d / 'checkpoint-last.pt') for d in (old, ref))
    for key in ('model', 'ema'):
        assert all(torch.equal(t, b[key][name]) for name, t in a[key].items()), key
    for i, state in a['optimizer']['state'].items():
        assert all(torch.equal(v, b['optimizer']['state'][i][k]) for k, v in state.items())


def test_a_planted_checkpoint_is_refused_in_one_line_and_its_payload_never_runs(tmp_path, caplog):
    out, marker = tmp_path / 'run', tmp_path / 'marker'
    cfg = dict(OLD_RUN, output_dir=str(out))
    planted = _planted(out / 'checkpoint-last.pt', marker)
    before = planted.read_bytes()
    with pytest.raises(ValueError) as refused:
        read_checkpoint(planted)
    assert str(refused.value) == (f'{planted} needs posix.system, which no checkpoint of fat-harness holds: refused, '
                                  'not unpickled')
    # the owner resumes the run: it fails, naming the file and the type, and leaves the file as it was
    result = main(cfg)
    assert not marker.exists()
    assert result['status'] == 'failed' and result['unreadable_checkpoints'] == ['checkpoint-last.pt']
    assert 'checkpoint-last.pt: ValueError:' in result['error'] and 'posix.system' in result['error']
    assert '\n' not in result['error'] and planted.read_bytes() == before
    # with a good previous checkpoint beside it, the run resumes from that one
    _old_checkpoint(tmp_path / 'good').rename(out / 'checkpoint-prev.pt')
    caplog.clear()
    assert main(cfg)['status'] == 'done' and not marker.exists()
    assert f'checkpoint {planted} is unreadable (ValueError: {planted} needs posix.system' in caplog.text


def test_two_unreadable_checkpoints_fail_the_run_until_it_is_restarted_explicitly(tmp_path, capsys):
    out = tmp_path / 'run'
    cfg = dict(OLD_RUN, output_dir=str(out))
    main(cfg)
    (out / 'result.json').unlink()  # as if it had been killed before the end
    for name in ('checkpoint-last.pt', 'checkpoint-prev.pt'):
        torn = out / f'{name}.torn'
        torn.write_bytes((out / name).read_bytes()[:1000])
        torn.replace(out / name)  # a new file each (they may be hard links of one another)
    torn = {name: (out / name).read_bytes() for name in ('checkpoint-last.pt', 'checkpoint-prev.pt')}
    result = main(cfg)
    assert result['status'] == 'failed' and result['steps'] == 0
    assert result['unreadable_checkpoints'] == ['checkpoint-last.pt', 'checkpoint-prev.pt']
    assert result['error'].startswith(f'UnreadableCheckpoints: no checkpoint in {out} loads (checkpoint-last.pt: ')
    assert '; checkpoint-prev.pt: ' in result['error'] and '--restart-unreadable' in result['error']
    assert json.loads((out / 'result.json').read_text()) == result
    assert {name: (out / name).read_bytes() for name in torn} == torn  # nothing written over them
    assert main(cfg)['status'] == 'failed'  # running it again does not start over either
    # the explicit option sets them aside, kept, and the run starts from step 0
    assert cli_main(['train', '--output-dir', str(out), '--restart-unreadable', *OLD_ARGS]) == 0
    err = capsys.readouterr().err
    assert err.count('set aside') == 2 and 'starts again from step 0' in err
    aside = sorted(p.name for p in out.glob('checkpoint-*.unreadable-*.pt'))
    assert len(aside) == 2 and sorted((out / n).read_bytes() for n in aside) == sorted(torn.values())
    assert json.loads((out / 'result.json').read_text())['status'] == 'done'
