"""The timm model contract (as timm's own tests/test_models.py states it) for every registered fat_* model,
and for every FASA variant on fat_b0. Input sizes follow timm's targets for each check."""
import inspect
import math

import pytest
import timm
import torch
from timm.layers import set_layer_config
from timm.models import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import fat  # noqa: F401  (registers the models)
from fat.models import FASA_VARIANTS

MODELS = timm.list_models('fat_*')
# fat_b1..b3 differ from fat_b0 only in widths, depths and heads: traced, scripted or checkpointed at 384 px they run
# the same code at several times the cost, so those checks of theirs run with `-m slow`
BY_CODE_PATH = [pytest.param(m, marks=pytest.mark.slow) if m in ('fat_b1', 'fat_b2', 'fat_b3') else m for m in MODELS]
PRESETS = list(FASA_VARIANTS)
# timm's per-check target input sizes
FWD_SIZE, BWD_SIZE, JIT_SIZE, FEAT_SIZE, FX_SIZE = 384, 128, 128, 96, 128


def _input_size(model: torch.nn.Module, target: int):
    c, h, w = model.pretrained_cfg['input_size']
    return (c, min(h, target), min(w, target))


def _randn(model: torch.nn.Module, target: int, batch_size: int = 1) -> torch.Tensor:
    return torch.randn(batch_size, *_input_size(model, target))


def _assert_all_grads(model: torch.nn.Module):
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f'parameters without gradient: {missing}'


def test_models_are_registered():
    assert {'fat_b0', 'fat_b1', 'fat_b2', 'fat_b3'} <= set(MODELS)
    # no official weights exist: every default cfg is tagged .untrained
    assert timm.list_models('fat_*', include_tags=True) == [f'{m}.untrained' for m in MODELS]
    assert timm.list_pretrained('fat_*') == []


def test_plan_time_keyword_list_is_the_constructors():
    # `fat sweep plan` checks a grid's model_args against fat.variants.FAT_ARGS without torch
    from fat.models.fat import FAT
    from fat.variants import FAT_ARGS
    assert list(inspect.signature(FAT.__init__).parameters)[1:] == list(FAT_ARGS)


def test_import_registers_with_grayscale_and_class_count():
    model = timm.create_model('fat_b0', num_classes=10, in_chans=1)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 10)


@pytest.mark.parametrize('name', BY_CODE_PATH)
def test_forward_and_grad_checkpointing_equal(name):
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    x = _randn(model, FWD_SIZE)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, model.num_classes) and not out.isnan().any()
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


def _backward(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=42, **kwargs).train()
    out = model(_randn(model, BWD_SIZE, batch_size=2))
    assert out.shape == (2, 42) and not out.isnan().any()
    out.mean().backward()
    return model


@pytest.mark.parametrize('name', MODELS)
def test_backward_reaches_every_parameter(name):
    _assert_all_grads(_backward(name))


@pytest.mark.parametrize('preset', PRESETS)
def test_backward_reaches_every_parameter_of_every_preset(preset):
    _assert_all_grads(_backward('fat_b0', fasa=preset))


@pytest.mark.parametrize('name', MODELS)
def test_default_cfg_heads_and_names(name):
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    x = torch.randn(1, *cfg['input_size'])
    assert model.num_features == model.head_hidden_size == model.feature_info[-1]['num_chs'] > 0
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (1, model.num_features, *cfg['pool_size'])
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (1, model.head_hidden_size)

        model.reset_classifier(0)
        assert model.num_classes == 0
        assert model(x).shape == pre.shape
        model.reset_classifier(0, '')
        assert model(x).shape == feats.shape
        unpooled = timm.create_model(name, num_classes=0, global_pool='').eval()
        assert unpooled(x).shape == feats.shape
    state_dict = timm.create_model(name).state_dict()
    assert f"{cfg['first_conv']}.weight" in state_dict
    assert f"{cfg['classifier']}.weight" in state_dict


@pytest.mark.parametrize('name', MODELS)
def test_reset_classifier_builds_a_working_head(name):
    model = timm.create_model(name).eval()
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7
    with torch.no_grad():
        assert model(_randn(model, FEAT_SIZE)).shape == (1, 7)


def _script(name: str, **kwargs):
    with set_layer_config(scriptable=True):
        model = timm.create_model(name, **kwargs).eval()
    return model, torch.jit.script(model)


@pytest.mark.parametrize('name', BY_CODE_PATH)
def test_torchscript(name):
    model, scripted = _script(name)
    x = _randn(model, JIT_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('preset', PRESETS)
def test_torchscript_every_preset(preset):
    model, scripted = _script('fat_b0', fasa=preset)
    x = _randn(model, JIT_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', MODELS)
def test_features_only_matches_feature_info(name):
    model = timm.create_model(name, features_only=True).eval()
    assert model.feature_info.channels() == [info['num_chs'] for info in timm.create_model(name).feature_info]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    x = _randn(model, FEAT_SIZE)
    with torch.no_grad():
        outs = model(x)
    assert len(outs) == 4
    for chs, red, out in zip(model.feature_info.channels(), model.feature_info.reduction(), outs, strict=True):
        assert out.shape == (1, chs, math.ceil(x.shape[2] / red), math.ceil(x.shape[3] / red))


@pytest.mark.parametrize('name', MODELS)
def test_forward_intermediates(name):
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    x = _randn(model, FEAT_SIZE)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert len(inter) == len(model.feature_info)
        for info, out in zip(model.feature_info, inter, strict=True):
            assert out.shape[1] == info['num_chs']
            assert out.shape[2] == math.ceil(x.shape[2] / info['reduction'])
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        model.set_grad_checkpointing()
        final2, _ = model.forward_intermediates(x)
        torch.testing.assert_close(final2, final, rtol=1e-4, atol=1e-5)
        # the last tap is the stage-4 output; normalised, it is forward_features
        last = model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)
        torch.testing.assert_close(last[0], final, rtol=0, atol=0)


def test_taps_are_taken_before_the_downsampling_ffn():
    model = timm.create_model('fat_b0').eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        inter = model.forward_intermediates(x, intermediates_only=True)
        h = model.stem(x)
        for i, stage in enumerate(model.stages):
            *blocks, last = stage.blocks
            for block in blocks:
                h = block(h)
            tap = last.forward_mixer(h) if i < 3 else last(h)
            torch.testing.assert_close(inter[i], tap, rtol=0, atol=0)
            h = last.forward_ffn(tap) if i < 3 else tap


def test_prune_intermediate_layers_keeps_requested_taps():
    model = timm.create_model('fat_b0').eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        model.prune_intermediate_layers([0, 1])
        assert len(model.stages) == 2 and model.num_classes == 0
        pruned = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    for a, b in zip(full, pruned, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _fx(model: torch.nn.Module, train: bool = False) -> torch.nn.Module:
    tracer_kwargs = dict(
        leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(), param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(
        model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
        tracer_kwargs=tracer_kwargs).train(train)


def _assert_fx_forward_bit_equal(model: torch.nn.Module):
    x = _randn(model, FX_SIZE)
    with torch.inference_mode():
        eager = model(x)
        traced, = _fx(model)(x).values()
    assert torch.equal(traced, eager)


@pytest.mark.parametrize('name', BY_CODE_PATH)
def test_fx_forward_is_bit_equal(name):
    _assert_fx_forward_bit_equal(timm.create_model(name).eval())


@pytest.mark.parametrize('preset', PRESETS)
def test_fx_forward_every_preset(preset):
    _assert_fx_forward_bit_equal(timm.create_model('fat_b0', fasa=preset).eval())


@pytest.mark.parametrize('name', BY_CODE_PATH)
def test_fx_backward_reaches_every_parameter(name):
    model = timm.create_model(name, num_classes=42)
    x = _randn(model, FX_SIZE, batch_size=2)
    model = _fx(model, train=True)
    out, = model(x).values()
    assert out.shape == (2, 42)
    out.mean().backward()
    _assert_all_grads(model)


def test_group_matcher_orders_every_parameter_for_layer_decay():
    from timm.models import group_parameters
    model = timm.create_model('fat_b0')
    groups = group_parameters(model, model.group_matcher())
    names = [n for _, params in sorted(groups.items()) for n in params]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    ordered = [params for _, params in sorted(groups.items())]
    # stem, then one group per block (12 in fat_b0; timm folds the final norm into the last), then the head
    assert len(ordered) == 1 + 12 + 1
    assert all(n.startswith('stem.') for n in ordered[0])
    blocks = [f'stages.{i}.blocks.{j}.' for i, depth in enumerate((2, 2, 6, 2)) for j in range(depth)]
    for prefix, params in zip(blocks, ordered[1:-1], strict=True):
        assert all(n.startswith((prefix, 'norm.')) for n in params), prefix
    assert {'norm.weight', 'norm.bias'} <= set(ordered[-2]) and ordered[-1] == ['head.weight', 'head.bias']
