"""Variational autoencoders: VAE (II) from the Bayesian viewpoint and VAE (VIII) density estimation."""
from kexue_jax.vae.importance import (importance_log_likelihood, importance_log_weight,
                                      iwae_log_likelihood, iwae_loss, log_mean_exp)
from kexue_jax.vae.vae import (VAE, BernoulliDecoder, GaussianDecoder, GaussianEncoder, bernoulli_binarized_loss,
                               bernoulli_log_likelihood, binarize, bits_per_dim, dequantize,
                               diagonal_gaussian_log_prob, elbo, elbo_terms, evaluate, gaussian_dequantized_loss,
                               gaussian_kl, gaussian_log_likelihood, preprocess, reparameterize,
                               standard_normal_log_prob)

__all__ = [
    'VAE', 'BernoulliDecoder', 'GaussianDecoder', 'GaussianEncoder', 'bernoulli_binarized_loss',
    'bernoulli_log_likelihood', 'binarize', 'bits_per_dim', 'dequantize', 'diagonal_gaussian_log_prob', 'elbo',
    'elbo_terms', 'evaluate', 'gaussian_dequantized_loss', 'gaussian_kl', 'gaussian_log_likelihood',
    'importance_log_likelihood', 'importance_log_weight', 'iwae_log_likelihood',
    'iwae_loss', 'log_mean_exp', 'preprocess', 'reparameterize', 'standard_normal_log_prob',
]
