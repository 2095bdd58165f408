"""Atomic writes: a writer that fails half-way leaves the previous file whole and no temporary behind."""
import json

import pytest

from fat.io import atomic_path, write_json_atomic


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / 'result.json'
    write_json_atomic(path, {'top1': 91.5})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text('{"top1": 9')  # half a file, then the writer dies
        raise RuntimeError('killed')
    assert json.loads(path.read_text()) == {'top1': 91.5}
    assert [p.name for p in tmp_path.iterdir()] == ['result.json']


def test_durable_write_replaces_and_creates_parents(tmp_path):
    path = tmp_path / 'a' / 'b.json'
    write_json_atomic(path, [1], durable=True)
    write_json_atomic(path, [2], durable=True)
    assert json.loads(path.read_text()) == [2]
