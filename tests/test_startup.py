"""`import fat` is light (no torch, no timm) and still registers the models with timm, whichever is imported
first; `fat --help` and the sweep verbs run without torch. Fresh interpreters: this test process has torch."""
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List

import timm
import yaml

import fat
from fat.variants import MODEL_NAMES

REPO = Path(__file__).resolve().parents[1]
HEAVY = ('torch', 'timm', 'torchvision', 'pandas')


def _python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-c', textwrap.dedent(code)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _run_all(codes: List[str]) -> List[str]:
    """Run the snippets in parallel fresh interpreters; each must exit 0. Their outputs."""
    procs = [_python(code) for code in codes]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for code, p, out in zip(codes, procs, outs, strict=True):
        assert p.returncode == 0, f'{code}\n{out}'
    return outs


def test_model_names_are_the_registered_ones():
    assert set(timm.list_models('fat_*')) == set(MODEL_NAMES)


def test_import_fat_registers_the_models_in_any_import_order():
    create = "m = timm.create_model('fat_b0', num_classes=3, fasa='global_only'); assert m.fasa_variant"
    _run_all([
        f"""
        import sys
        import fat
        assert not [m for m in {HEAVY!r} if m in sys.modules], 'import fat imported a heavy module'
        assert fat.resolve_fasa('global_only') == fat.FasaCfg(local='none', interaction='none')
        assert 'torch' not in sys.modules, 'the lazy FASA names imported torch'
        import timm
        assert 'fat.models' in sys.modules
        {create}
        """,
        f"""
        import timm
        import fat
        {create}
        """,
        f"""
        from fat.models import FAT
        import timm
        {create}
        assert isinstance(m, FAT)
        """,
    ])


def test_fat_help_sweep_verbs_and_the_sweep_job_import_no_torch(tmp_path):
    grid = tmp_path / 'light.yaml'
    grid.write_text(yaml.safe_dump({
        'preset': 'smoke', 'axes': {'fasa': ['fasa', 'global_only', {'local': 'static', 'interaction': 'none'}]},
        'seeds': [0, 1], 'slurm': {'profile': str(REPO / 'slurm' / 'local.yaml')}}))
    work = tmp_path / 'runs'
    # plan on Slurm also reads the partition's limits (fat.sweep.limits): still no torch
    verbs = [['sweep', 'plan', str(grid), '--workdir', str(work)],
             ['sweep', 'plan', str(grid), '--workdir', str(work), '--cluster', 'slurm'],
             ['sweep', 'status', str(grid), '--workdir', str(work)],
             ['sweep', 'launch', str(grid), '--workdir', str(work), '--dry-run', '--cluster', 'local']]
    out, = _run_all([f"""
        import contextlib, io, sys
        from fat.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                main(['--help'])
            except SystemExit as e:
                assert e.code == 0
        for argv in {verbs!r}:
            assert main(argv) == (1 if argv[1] == 'status' else 0), argv  # status: a grid never launched
        # the job a launch pickles for submitit: torch only when it runs a cell
        import pickle
        from fat.sweep.job import CellJob
        pickle.loads(pickle.dumps(CellJob(['cell'])))
        import fat.sweep.limits
        heavy = [m for m in {HEAVY!r} if m in sys.modules]
        assert not heavy, f'imported {{heavy}}'
        """])
    assert '6 cells: 6 NOT_LAUNCHED' in out and 'would submit 6 cells' in out


def test_lazy_names_are_those_of_fat_models():
    from fat.models import fasa
    assert fat.FasaCfg is fasa.FasaCfg and fat.FASA_VARIANTS is fasa.FASA_VARIANTS
    assert set(fat.__all__) <= set(dir(fat))
