"""Exact parity with the official code: the fixture's outputs and the official state_dict manifest."""
import pytest
import timm
import torch

import fat  # noqa: F401  (registers the models)
from fat.models import checkpoint_filter_fn

OFFICIAL_PARAMS = {'b0': 4_494_488, 'b1': 7_819_720, 'b2': 13_466_728, 'b3': 29_196_264}
TOL = 1e-4


def _official_b0(fixture: dict, train: bool) -> torch.nn.Module:
    # the fixture was made with drop_path_rate=0, so train mode is deterministic
    model = timm.create_model('fat_b0', drop_path_rate=0.)
    model.load_state_dict(checkpoint_filter_fn(fixture['state_dict'], model), strict=True)
    return model.train(train)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.mark.parametrize('fused', [True, False], ids=['sdpa', 'explicit'])
@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_logits_match_official(official_fixture, mode, fused):
    expected = official_fixture[f'{mode}_logits']
    assert set(expected) == set(official_fixture['inputs'])
    for name, x in official_fixture['inputs'].items():
        # a fresh model per input: a train-mode pass updates the BatchNorm running statistics
        model = _official_b0(official_fixture, train=mode == 'train')
        for m in model.modules():
            if hasattr(m, 'fused_attn'):
                m.fused_attn = fused
        with torch.no_grad():
            assert _max_diff(model(x), expected[name]) <= TOL, name


def test_stage_outputs_and_features_match_official(official_fixture):
    model = _official_b0(official_fixture, train=False)
    x = official_fixture['inputs']['224x224_b2']
    with torch.no_grad():
        h = model.stem(x)
        for i, stage in enumerate(model.stages):
            h = stage(h)
            assert _max_diff(h, official_fixture['stage_outputs_224'][i]) <= TOL, f'stage {i}'
        assert _max_diff(model.forward_features(x), official_fixture['features_224']) <= TOL


def test_forward_head_pre_logits_is_pooled_features(official_fixture):
    model = _official_b0(official_fixture, train=False)
    feats = official_fixture['features_224']
    with torch.no_grad():
        pooled = model.forward_head(feats, pre_logits=True)
        assert _max_diff(pooled, feats.mean((2, 3))) <= 1e-6
        assert _max_diff(model.head(pooled), official_fixture['eval_logits']['224x224_b2']) <= TOL


@pytest.mark.parametrize('size', ['b0', 'b1', 'b2', 'b3'])
def test_every_official_key_maps_onto_a_parameter_of_the_same_shape(official_manifest, size):
    entry = official_manifest['variants'][size]
    model = timm.create_model(f'fat_{size}')
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[size] == int(entry['num_params'])
    official = {k: torch.empty(shape) for k, shape in entry['state_dict'].items()}
    mapped = checkpoint_filter_fn(official, model)
    ours = model.state_dict()
    assert len(mapped) == len(official), 'two official keys mapped onto one name'
    assert set(mapped) == set(ours)
    for k, v in mapped.items():
        assert tuple(v.shape) == tuple(ours[k].shape), k


def test_checkpoint_filter_fn_unwraps_and_passes_native_state_dicts(official_fixture):
    model = timm.create_model('fat_b0')
    wrapped = checkpoint_filter_fn({'model': official_fixture['state_dict']}, model)
    assert set(wrapped) == set(model.state_dict())
    native = model.state_dict()
    assert checkpoint_filter_fn(native, model) is native
