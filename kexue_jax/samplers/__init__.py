"""Fast diffusion samplers on the EDM PF-ODE dx/dσ = (x − D(x, σ))/σ, up to AMED (kexue.fm 9881).

Every sampler is `sample_<slug>(denoise_fn, x_T, sigmas, *, key=None, **opts)`, runs in `lax.scan`, and its
module declares `ORDER`; `nfe(sampler, sigmas, **opts)` counts denoiser evaluations (AFS counted).
"""
from kexue_jax.samplers.amed import (OBJECTIVES, TEACHERS, AMEDPredictor, amed_distillation_loss, amed_step,
                                     amed_teacher_trajectory, sample_amed, sample_amed_plugin, teacher_grid,
                                     train_amed_predictor)
from kexue_jax.samplers.common import (afs_direction, edm_sigmas, gaussian_denoiser, gaussian_ode_solution,
                                       logsnr_sigmas, mixture_denoiser, nfe, refine_sigmas, time_uniform_sigmas)
from kexue_jax.samplers.ddpm import ddpm_step_std, sample_ddpm
from kexue_jax.samplers.deis import deis_coefficients, sample_deis
from kexue_jax.samplers.dpm_solver import dpm_solver_pp_coefficients, sample_dpm_solver_2, sample_dpm_solver_pp
from kexue_jax.samplers.euler import sample_ddim, sample_euler
from kexue_jax.samplers.heun import sample_heun
from kexue_jax.samplers.ipndm import ipndm_coefficients, sample_ipndm
from kexue_jax.samplers.unipc import sample_unipc, unipc_coefficients

__all__ = [
    "sample_euler", "sample_ddim", "sample_ddpm", "sample_heun", "sample_dpm_solver_2", "sample_dpm_solver_pp",
    "sample_ipndm", "sample_unipc", "sample_deis", "sample_amed", "sample_amed_plugin",
    "AMEDPredictor", "amed_step", "amed_teacher_trajectory", "amed_distillation_loss", "train_amed_predictor",
    "teacher_grid",
    "TEACHERS", "OBJECTIVES", "afs_direction", "nfe", "edm_sigmas", "logsnr_sigmas", "time_uniform_sigmas", "refine_sigmas",
    "gaussian_denoiser", "gaussian_ode_solution", "mixture_denoiser", "ddpm_step_std",
    "dpm_solver_pp_coefficients", "ipndm_coefficients", "unipc_coefficients", "deis_coefficients",
]
