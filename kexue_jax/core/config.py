"""Config helpers: import-path resolution and early, specific validation.

Configs are `ml_collections.ConfigDict`s written in `experiments/<family>/<slug>.py`. They name library
objects by import path ("kexue_jax.vae.vae.VAE", "optax.adam"); there is no registry. Everything a config
can get wrong is checked here, in plain Python, before anything is traced or compiled, and the error names
the key, what was expected and what was given (STYLE.md §12).
"""
from __future__ import annotations

import importlib
import inspect
import math
import numbers
from typing import Any, Callable

__all__ = ["ConfigError", "import_object", "require", "check_positive", "check_int", "is_finite_real", "check_real",
           "check_real_dict", "validate_train_config"]


class ConfigError(ValueError):
    """A config value is wrong. Subclasses ValueError so callers can catch either."""


def require(condition: bool, key: str, expected: str, got: Any) -> None:
    """Raises ConfigError("`key` must be expected; got got") unless `condition`."""
    if not condition:
        raise ConfigError(f"`{key}` must be {expected}; got {got!r}")


def import_object(path: str, *, key: str) -> Any:
    """Resolves 'package.module.attr' (or 'package.module:attr') to the object it names.

    Args:
      path: the import path.
      key: the config key that holds it, for the error message.
    """
    require(isinstance(path, str) and path.strip() != "", key,
            "an import path such as 'kexue_jax.vae.vae.VAE'", path)
    module_name, sep, attr = path.replace(":", ".").rpartition(".")
    require(bool(sep) and bool(module_name), key, "an import path such as 'kexue_jax.vae.vae.VAE'", path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"`{key}` must be an importable path 'package.module.attr'; got {path!r} "
                          f"(cannot import module {module_name!r}: {e})") from None
    if not hasattr(module, attr):
        raise ConfigError(f"`{key}` must be an importable path 'package.module.attr'; got {path!r} "
                          f"(module {module_name!r} has no attribute {attr!r})")
    return getattr(module, attr)


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_positive(value: Any, key: str) -> None:
    """A finite real number > 0."""
    require(_is_real(value) and math.isfinite(value) and value > 0, key, "a finite number > 0", value)


def is_finite_real(value: Any) -> bool:
    """A finite real number (bools excluded)."""
    return _is_real(value) and math.isfinite(value)


def check_real(value: Any, key: str, expected: str, ok: Callable[[float], bool] = lambda x: True) -> None:
    """A finite real number with ok(value); `expected` is the message's wording."""
    require(is_finite_real(value) and ok(value), key, expected, value)


def check_real_dict(value: Any, key: str, allowed: Any, expected: str, ok: Callable[[float], bool],
                    what: str | None = None) -> dict:
    """A dict whose keys are in `allowed` and whose every value passes `check_real` (named `key.<entry>`);
    `what` describes the dict in the message (default: "a dict with keys from <allowed>")."""
    what = what or f"a dict with keys from {allowed}"
    require(hasattr(value, "keys"), key, what, value)
    out = dict(value)
    for k, v in out.items():
        if k not in allowed:
            raise ConfigError(f"`{key}` must be {what}; got a key {k!r}")
        check_real(v, f"{key}.{k}", expected, ok)
    return out


def check_int(value: Any, key: str, *, minimum: int = 1) -> None:
    require(isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum,
            key, f"an integer >= {minimum}", value)


MESH_AXES = ("data", "fsdp")  # the axes the trainer shards over (sharding.batch_axes, param_shardings)


def mesh_size(mesh_config: Any, num_devices: int) -> dict[str, int]:
    """Resolves a mesh spec {'data': -1, 'fsdp': 1} against the device count (one -1 allowed)."""
    spec = dict(mesh_config) if mesh_config is not None else {"data": -1}
    require(len(spec) > 0 and all(isinstance(k, str) for k in spec), "mesh",
            "a dict of axis name -> size such as {'data': -1, 'fsdp': 1}", spec)
    for name, size in spec.items():
        require(name in MESH_AXES, "mesh", f"a dict whose axis names are among {list(MESH_AXES)}", spec)
        require(isinstance(size, numbers.Integral) and not isinstance(size, bool) and (size == -1 or size >= 1),
                f"mesh.{name}", "a positive integer or -1 (all remaining devices)", size)
    auto = [k for k, v in spec.items() if v == -1]
    require(len(auto) <= 1, "mesh", "a spec with at most one axis of size -1", spec)
    fixed = math.prod(v for v in spec.values() if v != -1)
    if auto:
        require(num_devices % fixed == 0, "mesh",
                f"axis sizes whose product divides the device count {num_devices}", spec)
        spec[auto[0]] = num_devices // fixed
    require(math.prod(spec.values()) == num_devices, "mesh",
            f"axis sizes whose product equals the device count {num_devices}", spec)
    return spec


def _check_optimizer_kwargs(factory: Callable[..., Any], config: Any) -> None:
    """`optimizer_kwargs` must be keyword arguments of the factory (a typo was a TypeError from optax)."""
    kwargs = dict(config.get("optimizer_kwargs") or {})
    require(callable(factory), "optimizer", "an importable optax factory such as 'optax.adam'", config.optimizer)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no introspectable signature: the call itself will tell
        return
    try:
        signature.bind_partial(learning_rate=0.1, **kwargs)
    except TypeError:
        names = [p for p in signature.parameters if p != "learning_rate"]
        raise ConfigError(f"`optimizer_kwargs` must be keyword arguments of {config.optimizer} ({names}); "
                          f"got {kwargs!r}") from None


_REQUIRED = ("seed", "dataset", "model", "loss", "optimizer", "learning_rate", "batch_size", "num_steps")


def validate_train_config(config: Any, *, num_devices: int) -> dict[str, Callable[..., Any]]:
    """Checks every key the shared trainer reads and resolves the import paths.

    Returns:
      dict with the resolved 'model', 'loss', 'optimizer' and (optional) 'evaluate' objects.
    Raises:
      ConfigError (a ValueError) naming the key, the expected and the given value.
    """
    from kexue_jax import data  # local: keeps `import kexue_jax.core` light

    for key in _REQUIRED:
        require(key in config, key, "set in the config (the shared trainer needs it)", "<missing>")
    check_int(config.seed, "seed", minimum=0)
    check_positive(config.learning_rate, "learning_rate")
    check_int(config.batch_size, "batch_size")
    check_int(config.num_steps, "num_steps")
    for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
        if config.get(key) is not None:
            check_int(config.get(key), key)
    if config.get("eval_every"):
        check_int(config.eval_every, "eval_every", minimum=0)
    ema = config.get("ema_decay")
    if ema is not None:
        require(_is_real(ema) and 0.0 <= ema < 1.0, "ema_decay", "None or a number in [0, 1)", ema)
    clip = config.get("grad_clip_norm")
    if clip is not None:
        check_positive(clip, "grad_clip_norm")
    if config.get("warmup_steps") is not None:  # checked even when the schedule does not read it
        check_int(config.warmup_steps, "warmup_steps", minimum=0)
    schedule = config.get("lr_schedule", "constant")
    require(schedule in ("constant", "cosine", "warmup_cosine"), "lr_schedule",
            "one of 'constant', 'cosine', 'warmup_cosine'", schedule)
    if schedule == "warmup_cosine":
        check_int(config.get("warmup_steps"), "warmup_steps", minimum=0)
        # optax's warmup_cosine_decay_schedule needs decay steps num_steps - warmup_steps > 0
        require(config.warmup_steps < config.num_steps, "warmup_steps",
                f"an integer < num_steps ({config.num_steps}) when lr_schedule='warmup_cosine'",
                config.warmup_steps)

    axes = mesh_size(config.get("mesh"), num_devices)
    batch_devices = axes.get("data", 1) * axes.get("fsdp", 1)
    require(config.batch_size % batch_devices == 0, "batch_size",
            f"divisible by the number of batch-parallel devices ({batch_devices} = data x fsdp of mesh "
            f"{axes})", config.batch_size)

    data.check_name(config.dataset)  # raises ValueError naming `dataset`
    resolved = {
        "model": import_object(config.model, key="model"),
        "loss": import_object(config.loss, key="loss"),
        "optimizer": import_object(config.optimizer, key="optimizer"),
    }
    require(callable(resolved["model"]), "model", "a callable (an nnx.Module class or factory)", config.model)
    _check_optimizer_kwargs(resolved["optimizer"], config)
    if config.get("data_init"):
        import_object(config.data_init, key="data_init")
    if config.get("evaluate"):
        resolved["evaluate"] = import_object(config.evaluate, key="evaluate")
        # An evaluate hook may carry `check_config(config)` for the keys only it reads, so that a mistake
        # there is caught now and not after hours of training.
        check = getattr(resolved["evaluate"], "check_config", None)
        if check is not None:
            check(config)
    return resolved
