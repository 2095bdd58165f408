"""The FASA variant space: every preset computes its equation, builds only what it uses, and nonsense is
refused with a message that names the problem."""
import pytest
import timm
import torch
import torch.nn.functional as F

import fat  # noqa: F401  (registers the models)
from fat.models import FASA, FASA_VARIANTS, FasaCfg, list_fasa_variants, resolve_fasa
from fat.models.fasa import AXES

OFFICIAL_B0 = 4_494_488
# fat_b0 parameter counts per preset, pinned
B0_PARAMS = {
    'fasa': OFFICIAL_B0,
    'fasa_bidirectional': OFFICIAL_B0,
    'no_interaction': OFFICIAL_B0,
    'static_conv': OFFICIAL_B0,
    'avgpool_downsample': 4_436_088,  # - 58,400: the fine-grained ladders of stages 1-3
    'global_only': 4_399_704,  # - 94,784: the local depthwise convs
    'local_only': 3_833_656,  # - 660,832: the K/V projections and the ladders
}


def _n(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _randomise_(module: torch.nn.Module) -> torch.nn.Module:
    """Move every parameter and BN statistic away from its init, so each one matters to the output."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return module.eval()


def _conv(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, groups=conv.groups)


def _reference(m: FASA, x: torch.Tensor) -> torch.Tensor:
    """DESIGN.md section 4, computed from the module's own weights with plain functional ops."""
    cfg = m.cfg
    B, C, H, W = x.shape
    q = _conv(x, m.q)
    branches = {}
    if cfg.local != 'none':
        L = _conv(q, m.local_mixer)
        branches['l'] = L * torch.sigmoid(L) if cfg.local == 'self_modulated' else L
    if cfg.global_ == 'attention':
        d = x
        if m.window_size > 1 and cfg.downsample == 'avgpool':
            d = F.avg_pool2d(x, m.window_size, m.window_size, ceil_mode=True)
        elif m.window_size > 1:
            for layer in m.pool:
                if isinstance(layer, torch.nn.BatchNorm2d):
                    d = F.batch_norm(d, layer.running_mean, layer.running_var, layer.weight, layer.bias, eps=layer.eps)
                else:
                    d = _conv(d, layer)
        kv = _conv(d, m.kv)
        k, v = kv[:, :C], kv[:, C:]
        heads, hd = m.num_heads, C // m.num_heads
        qh = q.reshape(B, heads, hd, H * W)
        kh, vh = k.reshape(B, heads, hd, -1), v.reshape(B, heads, hd, -1)
        attn = torch.softmax(torch.einsum('bhdn,bhdm->bhnm', qh, kh) / hd ** 0.5, dim=-1)
        branches['g'] = torch.einsum('bhnm,bhdm->bhdn', attn, vh).reshape(B, C, H, W)
    if len(branches) == 1:
        y, = branches.values()
    else:
        loc, g = branches['l'], branches['g']
        y = {
            'one_way': loc * torch.sigmoid(g) * g,
            'bidirectional': (loc * torch.sigmoid(g)) * (g * torch.sigmoid(loc)),
            'none': loc + g,
        }[cfg.interaction]
    return _conv(y, m.mixer)


@pytest.mark.parametrize('fused', [True, False], ids=['sdpa', 'explicit'])
@pytest.mark.parametrize('window_size', [1, 2, 4])
@pytest.mark.parametrize('preset', list(FASA_VARIANTS))
def test_module_computes_its_equation(preset, window_size, fused):
    m = _randomise_(FASA(dim=24, kernel_size=5, num_heads=3, window_size=window_size, cfg=resolve_fasa(preset)))
    m.fused_attn = fused
    x = torch.randn(2, 24, 13, 10)  # odd sizes: the ceil(h / r) grid and partial pooling windows
    with torch.no_grad():
        assert (m(x) - _reference(m, x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize('preset', list(FASA_VARIANTS))
def test_preset_parameter_counts_are_pinned(preset):
    assert _n(timm.create_model('fat_b0', fasa=preset)) == B0_PARAMS[preset]


def test_ablations_drop_exactly_their_layers():
    official = timm.create_model('fat_b0')
    attns = [m for m in official.modules() if isinstance(m, FASA)]
    local = sum(_n(a.local_mixer) for a in attns)
    ladders = sum(_n(a.pool) for a in attns)
    kv = sum(_n(a.kv) for a in attns)
    assert local == 94_784 and ladders == 58_400 and kv == 602_432
    assert _n(timm.create_model('fat_b0', fasa='global_only')) == OFFICIAL_B0 - local
    assert _n(timm.create_model('fat_b0', fasa='avgpool_downsample')) == OFFICIAL_B0 - ladders
    assert _n(timm.create_model('fat_b0', fasa='local_only')) == OFFICIAL_B0 - kv - ladders


@pytest.mark.parametrize('preset', [p for p in FASA_VARIANTS if p != 'fasa'])
def test_presets_sharing_weights_with_fasa_give_different_outputs(preset):
    official = _randomise_(timm.create_model('fat_b0'))
    variant = timm.create_model('fat_b0', fasa=preset).eval()
    missing, unexpected = variant.load_state_dict(official.state_dict(), strict=False)
    assert not missing, 'every variant parameter exists in the official model'
    assert bool(unexpected) == (B0_PARAMS[preset] != OFFICIAL_B0)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (variant(x) - official(x)).abs().max().item() > 1e-3


def test_per_stage_variants_and_their_record():
    spec = ['fasa', 'static_conv', {'interaction': 'none'}, 'global_only']
    model = timm.create_model('fat_b0', fasa=spec)
    names = ['fasa', 'static_conv', 'no_interaction', 'global_only']
    assert [stage.blocks[0].attn.cfg.name for stage in model.stages] == names
    assert model.fasa_variant == names == model.pretrained_cfg['fasa']
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_variant_is_recorded_in_cfg_and_repr():
    model = timm.create_model('fat_b0', fasa='global_only')
    assert model.pretrained_cfg['fasa'] == 'global_only'
    assert 'variant=global_only' in repr(model)
    assert timm.create_model('fat_b0').pretrained_cfg['fasa'] == 'fasa'
    features = timm.create_model('fat_b0', fasa='static_conv', features_only=True)
    assert features.model.pretrained_cfg['fasa'] == 'static_conv'


def test_specs_resolve_to_configs():
    assert resolve_fasa('fasa') == FasaCfg() == resolve_fasa({}) == resolve_fasa(FasaCfg())
    assert resolve_fasa({'local': 'none'}) == FASA_VARIANTS['global_only'][0]  # interaction follows the branch
    assert resolve_fasa({'global': 'none'}) == FASA_VARIANTS['local_only'][0]
    assert resolve_fasa({'downsample': 'avgpool'}).name == 'avgpool_downsample'
    custom = resolve_fasa({'local': 'static', 'interaction': 'none'})
    assert custom.name == 'local=static,global=attention,downsample=fine_grained,interaction=none'
    assert FasaCfg.from_dict(custom.as_dict()) == custom


def test_presets_are_listed_with_one_line_each():
    listed = list_fasa_variants()
    assert list(listed) == list(FASA_VARIANTS) == [
        'fasa', 'fasa_bidirectional', 'no_interaction', 'avgpool_downsample', 'static_conv', 'global_only',
        'local_only']
    assert all('\n' not in line and line for line in listed.values())


@pytest.mark.parametrize('spec, expected', [
    ('global_onyl', ["variant 'global_onyl'", 'global_only', "did you mean 'global_only'"]),
    ('FASA', ["variant 'FASA'", 'valid: fasa, fasa_bidirectional']),
    ({'local': 'self_modulate'}, ["axis 'local'", "'self_modulate'", 'static', "did you mean 'self_modulated'"]),
    ({'global': 'attn'}, ["axis 'global'", "'attn'", 'valid: attention, none']),
    ({'downsample': 'avg_pool'}, ["axis 'downsample'", "did you mean 'avgpool'"]),
    ({'interaction': 'bidirectonal'}, ["axis 'interaction'", "did you mean 'bidirectional'"]),
    ({'interation': 'none'}, ["axis 'interation'", 'valid: local, global, downsample, interaction',
                              "did you mean 'interaction'"]),
    ({'local': 'none', 'interaction': 'one_way'}, ["interaction='one_way'", "local='none'"]),
    ({'global': 'none', 'interaction': 'bidirectional'}, ["interaction='bidirectional'", "global='none'"]),
    ({'local': 'none', 'global': 'none'}, ['no branch']),
    ({'global': 'none', 'downsample': 'avgpool'}, ["downsample='avgpool'", "global='none'"]),
    (3, ['expected a variant name']),
])
def test_nonsense_is_refused_with_a_clear_message(spec, expected):
    with pytest.raises(ValueError) as err:
        resolve_fasa(spec)
    for text in expected:
        assert text in str(err.value)


def test_model_level_errors():
    with pytest.raises(ValueError, match="did you mean 'local_only'"):
        timm.create_model('fat_b0', fasa='local_onyl')
    with pytest.raises(ValueError, match='needs 4 entries, got 2'):
        timm.create_model('fat_b0', fasa=['fasa', 'fasa'])
    with pytest.raises(ValueError, match='power-of-two window size, got 3'):
        FASA(16, 3, 2, window_size=3)


def test_axes_table_matches_the_documented_space():
    assert AXES == {
        'local': ('self_modulated', 'static', 'none'),
        'global': ('attention', 'none'),
        'downsample': ('fine_grained', 'avgpool'),
        'interaction': ('one_way', 'bidirectional', 'none'),
    }
