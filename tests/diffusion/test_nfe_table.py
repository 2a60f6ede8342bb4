"""The NFE-table grid choice: NFE counts solver steps only (diff-sampler's convention)."""
import numpy as np
import pytest

from kexue_jax import samplers
from kexue_jax.diffusion import schedules
from kexue_jax.diffusion.nfe_table import SAMPLERS, grid_for_nfe


@pytest.mark.parametrize("name", ["ddim", "heun", "dpm_solver_pp_3m", "ipndm", "unipc", "deis"])
@pytest.mark.parametrize("target", [3, 5, 8])
def test_grid_has_the_target_nfe_and_ends_at_sigma_min(name, target):
    attr, opts, kind, rho = SAMPLERS[name]
    fn = getattr(samplers, attr)
    sig = grid_for_nfe(fn, target, kind, rho, 0.002, 80.0, **opts)
    sig = np.asarray(sig)
    if name == "heun" and target % 2:  # Heun: 2 evaluations per step to σ_min, 1 on a final step to 0
        assert sig[-1] == 0.0 and samplers.nfe(fn, sig) == target
        return
    assert samplers.nfe(fn, sig, **opts) == target
    assert sig[0] == pytest.approx(80.0) and sig[-1] == pytest.approx(0.002)  # no evaluation spent at σ = 0
    np.testing.assert_allclose(sig, np.asarray(schedules.sigma_grid(kind, len(sig), 0.002, 80.0, rho,
                                                                    append_zero=False)), rtol=1e-6)


def test_heun_even_nfe_ends_at_sigma_min():
    attr, opts, kind, rho = SAMPLERS["heun"]
    sig = np.asarray(grid_for_nfe(getattr(samplers, attr), 4, kind, rho, 0.002, 80.0, **opts))
    assert len(sig) == 3 and sig[-1] == pytest.approx(0.002) and samplers.nfe(samplers.sample_heun, sig) == 4


@pytest.mark.parametrize("name, afs", [("amed", True), ("amed_plugin", False), ("amed_plugin_afs", True),
                                       ("amed_plugin_r05", False), ("amed_plugin_afs_r05", True)])
def test_amed_grids_nfe_parity(name, afs):
    """AMED spends 2 evaluations per step, AFS saves the first: with AFS the grids have the paper's odd NFE
    (3, 5, ...: 2N − 1 for N steps), without it the even ones only (the plugin row of the NFE-4/6/8/10 cells)."""
    attr, opts, kind, rho = SAMPLERS[name]
    assert opts.get("afs", False) is afs
    fn = getattr(samplers, attr)
    extra = dict(opts, predictor=(np.zeros(1), np.ones(1), np.ones(1)))
    for target in (3, 4, 5, 6, 8, 10):
        sig = grid_for_nfe(fn, target, kind, rho, 0.002, 80.0, allow_zero=False, **extra)
        if (target % 2 == 1) == afs:
            assert sig is not None and samplers.nfe(fn, sig, **extra) == target
            assert len(sig) - 1 == (target + afs) // 2 and sig[-1] == pytest.approx(0.002)
        else:
            assert sig is None
