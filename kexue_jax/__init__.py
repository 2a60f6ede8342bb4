"""kexue_jax: Su Jianlin's Scientific Spaces (kexue.fm) articles as tested, sharded JAX code.

Importing the package has no side effects; import the family you need, e.g. `kexue_jax.vae`.
"""
__version__ = "0.1.0"
