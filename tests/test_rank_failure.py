"""A DDP run where one rank alone fails records that rank's error, not the 'Connection closed by peer' its partner
then hits (issue 29 item 2). Two real CPU processes over gloo, an image folder with one corrupt image."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
from PIL import Image


def test_the_first_real_error_of_a_ddp_run_is_recorded_with_its_rank(tmp_path):
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for label in ('a', 'b'):
            folder = tmp_path / 'data' / split / label
            folder.mkdir(parents=True)
            for i in range(16):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f'{i}.jpg')
    (tmp_path / 'data' / 'train' / 'b' / '7.jpg').write_bytes(b'not a jpeg')  # one rank's shard holds it
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    out = tmp_path / 'run'
    cmd = [sys.executable, '-m', 'fat.cli', 'train', '--output-dir', str(out), '--preset', 'smoke',
           'dataset=imagenet', f"data_dir={tmp_path / 'data'}", 'img_size=32', 'in_chans=3', 'train_subset=0',
           'val_subset=0', 'batch_size=4', 'epochs=1']
    ranks = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(
        os.environ, MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), WORLD_SIZE='2', RANK=str(r), LOCAL_RANK=str(r)))
        for r in range(2)]
    logs = [p.communicate(timeout=120)[1] for p in ranks]
    assert [p.returncode for p in ranks] == [1, 1], logs  # both fail, neither exits 0 as if nothing happened
    result = json.loads((out / 'result.json').read_text())
    assert result['status'] == 'failed'
    culprit = result['failed_rank']
    assert culprit == 1  # rank 1 alone holds it: rank 0's own error is the closed connection
    assert result['error'].startswith(f'rank {culprit}: ') and 'cannot identify image file' in result['error'], result
    assert "7.jpg" in result['error'] and 'Connection closed' not in result['error']
    assert set(result['rank_errors']) == {'0', '1'}  # the other rank's own (secondary) error is kept beside it
