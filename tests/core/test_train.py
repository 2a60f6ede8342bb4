"""The shared trainer: the step's maths, determinism, EMA, carried model state, config errors."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from kexue_jax.core import config as config_lib
from kexue_jax.core import train
from kexue_jax.nn import mlp
from tests.core import tiny_config
from tests.helpers import BACKEND_COMPILES


def _tiny_model(seed=0):
    return mlp.ImageClassifier(image_shape=(8, 8, 1), hidden=(16,), num_classes=10, levels=17,
                               rngs=nnx.Rngs(seed))


def _batch(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.integers(0, 17, (n, 8, 8, 1)), jnp.uint8),
            "label": jnp.asarray(rng.integers(0, 10, n), jnp.int32)}


def test_batch_indices_are_epochwise_permutations_and_stateless():
    n, b = 50, 8
    steps_per_epoch = n // b
    seen = np.concatenate([train.batch_indices(s, n, b, seed=3) for s in range(steps_per_epoch)])
    assert len(np.unique(seen)) == len(seen) == steps_per_epoch * b  # no repeats within an epoch
    np.testing.assert_array_equal(train.batch_indices(9, n, b, 3), train.batch_indices(9, n, b, 3))
    assert not np.array_equal(train.batch_indices(0, n, b, 3), train.batch_indices(steps_per_epoch, n, b, 3))
    with pytest.raises(ValueError, match="`batch_size` must be <= the number of training examples"):
        train.batch_indices(0, 5, 8, 0)


def test_train_step_is_exactly_sgd_on_autodiff_gradients():
    model = _tiny_model()
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    lr = 0.1
    tx = optax.sgd(lr)
    state = train.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), model_state, None)
    step = train.make_train_step(mlp.classifier_loss, tx, graphdef)
    batch = _batch()
    new_state, metrics = step(state, batch, key=jax.random.key(0))

    def loss_of(p):
        return mlp.classifier_loss(nnx.merge(graphdef, p, model_state), batch, key=None)[0]

    grads = jax.grad(loss_of)(params)
    expected = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), new_state.params, expected)
    np.testing.assert_allclose(metrics["loss"], loss_of(params), rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-6)
    assert int(new_state.step) == 1


def test_ema_follows_the_recurrence():
    model = _tiny_model()
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(1e-2)
    decay = 0.8
    state = train.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), model_state,
                             jax.tree.map(jnp.copy, params))
    step = jax.jit(train.make_train_step(mlp.classifier_loss, tx, graphdef, ema_decay=decay))
    ema = jax.tree.map(np.asarray, params)
    for i in range(4):
        state, _ = step(state, _batch(seed=i), key=jax.random.key(i))
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * np.asarray(p), ema, state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), state.ema_params, ema)


def test_non_param_model_state_is_carried_and_not_trained():
    from tests.core.fixtures import CountingClassifier, nan_at_step_loss
    import functools

    model = CountingClassifier(image_shape=(8, 8, 1), hidden=(8,), num_classes=10, levels=17, rngs=nnx.Rngs(0))
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    tx = optax.sgd(0.1)
    state = train.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), model_state, None)
    step = jax.jit(train.make_train_step(functools.partial(nan_at_step_loss, nan_step=100), tx, graphdef))
    for i in range(3):
        state, _ = step(state, _batch(), key=jax.random.key(i))
    assert int(state.model_state["calls"][...]) == 3
    assert "calls" not in state.params


def test_per_step_key_is_fold_in_of_the_step():
    tx = optax.sgd(0.1)
    params = {"w": jnp.ones(3)}
    state = train.TrainState(jnp.asarray(7, jnp.int32), params, tx.init(params), None, None)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    shardings = train.state_shardings(jax.eval_shape(lambda: state), mesh)
    # The "loss" is a uniform draw from the step key, so the metric reveals which key the step used.
    probe = train.jit_train_step(train.make_train_step(
        lambda p, b, *, key: (jax.random.uniform(key) + 0.0 * p["w"].sum(), {}), tx), mesh, shardings)
    base = jax.random.key(11)
    _, m = probe(state, {"x": jnp.zeros((1, 1))}, base)
    np.testing.assert_array_equal(m["loss"], jax.random.uniform(jax.random.fold_in(base, 7)))


# ---- config errors: raised before anything compiles, naming key, expectation and value ----

BAD_CONFIGS = [
    (dict(learning_rate=-1e-3), r"`learning_rate` must be a finite number > 0; got -0\.001"),
    (dict(learning_rate=float("nan")), r"`learning_rate` must be a finite number > 0; got nan"),
    (dict(dataset="imagenet_typo"), r"`dataset` must be one of .*got 'imagenet_typo'"),
    (dict(model="kexue_jax.nn.mlp.NoSuchModel"), r"`model` must be an importable path .*NoSuchModel"),
    (dict(model="no_such_package.Model"), r"`model` must be an importable path .*no_such_package"),
    (dict(loss="kexue_jax.nn.mlp.nope"), r"`loss` must be an importable path"),
    (dict(num_steps=0), r"`num_steps` must be an integer >= 1; got 0"),
    (dict(batch_size=-4), r"`batch_size` must be an integer >= 1; got -4"),
    (dict(ema_decay=1.0), r"`ema_decay` must be None or a number in \[0, 1\); got 1\.0"),
    (dict(lr_schedule="linear"), r"`lr_schedule` must be one of 'constant', 'cosine', 'warmup_cosine'; got 'linear'"),
    (dict(lr_schedule="warmup_cosine", warmup_steps=100, num_steps=40),
     r"`warmup_steps` must be an integer < num_steps \(40\) when lr_schedule='warmup_cosine'; got 100"),
    (dict(mesh=dict(data=3)), r"`mesh` must be axis sizes whose product equals the device count 1"),
    (dict(lr_schedule="constant", warmup_steps=-1), r"`warmup_steps` must be an integer >= 0; got -1"),
    (dict(mesh=dict(dat=-1)), r"`mesh` must be a dict whose axis names are among \['data', 'fsdp'\]"),
    (dict(optimizer_kwargs=dict(b11=0.9)),
     r"`optimizer_kwargs` must be keyword arguments of optax.adam \(\['b1', .*\]\); got \{'b11': 0.9\}"),
]


@pytest.mark.parametrize("override, message", BAD_CONFIGS)
def test_bad_config_raises_before_compiling(override, message, tmp_path, monkeypatch):
    config = tiny_config.get_config()
    for k, v in override.items():
        config[k] = v

    def no_compile(*a, **k):
        raise AssertionError("jax.jit was called before the config was validated")

    monkeypatch.setattr(train.jax, "jit", no_compile)
    BACKEND_COMPILES.clear()  # eager jax ops compile too, without jax.jit
    with pytest.raises(ValueError, match=message):
        train.train_and_evaluate(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")
    assert BACKEND_COMPILES == []


def test_loss_kwargs_mistake_raises_in_the_abstract_trace_before_compiling(tmp_path, monkeypatch):
    config = tiny_config.get_config()
    config.loss_kwargs = dict(temperature=2.0)  # classifier_loss has no such argument
    compiled = []
    monkeypatch.setattr(train.jax, "jit", lambda *a, **k: compiled.append(1))
    with pytest.raises(TypeError, match="temperature"):
        train.train_and_evaluate(config, str(tmp_path))
    assert not compiled and not os.path.exists(tmp_path / "checkpoints")


def test_batch_not_divisible_by_devices_names_the_key():
    config = tiny_config.get_config()
    config.batch_size = 12
    with pytest.raises(config_lib.ConfigError,
                       match=r"`batch_size` must be divisible by the number of batch-parallel devices "
                             r"\(8 = data x fsdp .*\); got 12"):
        config_lib.validate_train_config(config, num_devices=8)
    config.mesh = dict(data=2, fsdp=4)
    config.batch_size = 16
    config_lib.validate_train_config(config, num_devices=8)  # 16 % 8 == 0: fine


def test_mesh_spec_resolution():
    assert config_lib.mesh_size({"data": -1, "fsdp": 2}, 8) == {"data": 4, "fsdp": 2}
    with pytest.raises(config_lib.ConfigError, match=r"`mesh` must be a spec with at most one axis of size -1"):
        config_lib.mesh_size({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(config_lib.ConfigError, match=r"`mesh.fsdp` must be a positive integer or -1"):
        config_lib.mesh_size({"data": -1, "fsdp": 0}, 8)


def test_train_and_evaluate_learns_and_writes_results(tmp_path):
    config = tiny_config.get_config()
    config.num_steps = 60
    results = train.train_and_evaluate(config, str(tmp_path))
    # A 32-unit MLP on digits reaches well above chance (10%) in 60 Adam steps.
    assert results["test/accuracy"] > 0.8, results
    assert os.path.exists(tmp_path / "results.json") and os.path.exists(tmp_path / "metrics.jsonl")
    assert os.path.exists(tmp_path / "train_loss.png")


def test_metrics_are_fetched_at_least_every_16_steps_even_when_logging_is_rare(tmp_path, monkeypatch):
    """The guard against the XLA:CPU multi-device deadlock (spec/environment.md §2.4): dispatching more
    than ~32 steps with collectives without blocking aborts the process, so the trainer must block on
    its metrics every <= 16 steps whatever `log_every` says. (In our loop the per-step host->device batch
    transfer also throttles dispatch, so an 8-device run cannot show the hang reliably; the mechanism is
    what this test pins down.)"""
    fetched = []
    real_device_get = jax.device_get

    def spy(x):
        if isinstance(x, list):
            fetched.append(len(x))
        return real_device_get(x)

    monkeypatch.setattr(train.jax, "device_get", spy)
    config = tiny_config.get_config()
    config.num_steps, config.log_every, config.checkpoint_every, config.evaluate = 50, 1000, 1000, None
    train.train_and_evaluate(config, str(tmp_path))
    assert sum(fetched) == 50 and max(fetched) <= train.MAX_STEPS_WITHOUT_SYNC == 16, fetched


def test_data_init_sets_params_from_the_batch_and_reinitialises_the_optimizer():
    from tests.core.fixtures import mean_bias_data_init

    tx = optax.adam(1e-2)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    factory = lambda rngs: _tiny_model()  # noqa: E731
    graphdef, state, shardings = train.init_state(factory, {}, tx, seed=0, mesh=mesh)
    batch = _batch()
    new = train.apply_data_init(mean_bias_data_init, graphdef, state, batch, tx, shardings, key=jax.random.key(0))
    model = train.merge_model(graphdef, new.params, new.model_state)
    np.testing.assert_allclose(np.asarray(model(batch["image"])).mean(0), 0.0, atol=1e-5)
    jax.tree.map(np.testing.assert_array_equal, new.opt_state, tx.init(new.params))
    assert not np.allclose(new.params["mlp"]["layers"][1]["bias"][...], state.params["mlp"]["layers"][1]["bias"][...])


def test_data_init_runs_on_a_fresh_start_only(tmp_path):
    config = tiny_config.get_config()
    config.data_init = "tests.core.fixtures.mean_bias_data_init"
    config.log_every, config.checkpoint_every = 1, 1
    config.num_steps = 4
    straight = train.train_and_evaluate(config, str(tmp_path / "a"))
    config.num_steps = 2
    train.train_and_evaluate(config, str(tmp_path / "b"))
    config.num_steps = 4
    resumed = train.train_and_evaluate(config, str(tmp_path / "b"))  # would differ if the init re-ran
    assert resumed["train/loss"] == straight["train/loss"]
    assert resumed["test/loss"] == straight["test/loss"]


def test_check_real_dict_names_the_entry():
    assert config_lib.check_real_dict({"a": 1.0}, "w", ("a", "b"), "a finite number >= 0", lambda x: x >= 0) == {"a": 1.0}
    with pytest.raises(config_lib.ConfigError, match=r"`w.b` must be a finite number >= 0; got nan"):
        config_lib.check_real_dict({"b": float("nan")}, "w", ("a", "b"), "a finite number >= 0", lambda x: x >= 0)
    with pytest.raises(config_lib.ConfigError, match=r"`w` must be a dict with keys from \('a',\); got a key 'c'"):
        config_lib.check_real_dict({"c": 1.0}, "w", ("a",), "a finite number", lambda x: True)
    with pytest.raises(config_lib.ConfigError, match=r"`w` must be a dict with keys from"):
        config_lib.check_real_dict(3.0, "w", ("a",), "a finite number", lambda x: True)


# ---- resuming keeps metrics.jsonl and results.json as one uninterrupted run would write them ----


def _rows(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_resume_between_log_steps_and_at_an_evaluation_writes_the_uninterrupted_rows(tmp_path):
    # checkpoint_every 7 is not a multiple of log_every 5: the rows at 10 and 15 average steps on both sides of
    # a checkpoint. A kill right after the save of step 7 leaves checkpoint 7 (with its window of steps 6-7) and
    # the rows up to 7 (train row 5, evaluation row 7). The resumed run must write the straight run's rows.
    config = tiny_config.get_config()
    config.checkpoint_every, config.eval_every = 7, 7
    straight = str(tmp_path / "straight")
    train.train_and_evaluate(config, straight)
    resumed = str(tmp_path / "resumed")
    shutil.copytree(os.path.join(straight, "checkpoints", "7"), os.path.join(resumed, "checkpoints", "7"))
    shutil.copytree(os.path.join(straight, "train_window"), os.path.join(resumed, "train_window"))
    for name in os.listdir(os.path.join(resumed, "train_window")):
        if name != "7.json":
            os.remove(os.path.join(resumed, "train_window", name))
    rows = _rows(straight)
    kinds = [(r["step"], "train" if "train/loss" in r else "eval") for r in rows]
    assert kinds == [(5, "train"), (7, "eval"), (10, "train"), (14, "eval"), (15, "train"), (20, "train"),
                     (20, "eval")]
    with open(os.path.join(resumed, "metrics.jsonl"), "w") as f:  # what the killed run had written: rows <= 7
        f.writelines(json.dumps(r) + "\n" for r in rows if r["step"] <= 7)
    train.train_and_evaluate(config, resumed)
    assert _rows(resumed) == rows  # every value bit for bit, each row once, the evaluation at 7 included


def test_rerunning_a_finished_workdir_only_reevaluates(tmp_path):
    config = tiny_config.get_config()
    workdir = str(tmp_path)
    first = train.train_and_evaluate(config, workdir)
    rows = _rows(workdir)
    again = train.train_and_evaluate(config, workdir)
    assert _rows(workdir) == rows  # no second evaluation row, no lost training row
    assert again == first  # train/ numbers (steps/s included) are the training run's; the evaluation is equal
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["train/loss"] == first["train/loss"]


def test_num_steps_below_the_latest_checkpoint_is_an_error_before_compiling(tmp_path, monkeypatch):
    config = tiny_config.get_config()
    train.train_and_evaluate(config, str(tmp_path))  # checkpoints at 10 and 20
    config.num_steps = 4

    def no_compile(*a, **k):
        raise AssertionError("jax.jit was called before the config was validated")

    monkeypatch.setattr(train.jax, "jit", no_compile)
    BACKEND_COMPILES.clear()
    with pytest.raises(config_lib.ConfigError) as e:
        train.train_and_evaluate(config, str(tmp_path))
    assert BACKEND_COMPILES == []
    assert str(e.value) == (f"`num_steps` must be >= the step of the latest checkpoint in `workdir` {tmp_path} (20): "
                            "training cannot go back; got 4 (use the config that wrote it or a fresh workdir)")


def test_log_every_none_means_the_default(tmp_path):
    config = tiny_config.get_config()
    config.log_every, config.num_steps, config.checkpoint_every = None, 6, None
    train.train_and_evaluate(config, str(tmp_path))
    assert [r["step"] for r in _rows(str(tmp_path)) if "train/loss" in r] == [6]  # default 50 > 6: the last step


def test_mesh_axis_names_and_sizes_are_checked():
    with pytest.raises(config_lib.ConfigError, match=r"`mesh` must be a dict whose axis names are among "
                                                      r"\['data', 'fsdp'\]; got \{'dat': -1\}"):
        config_lib.mesh_size({"dat": -1}, 8)
    with pytest.raises(config_lib.ConfigError, match=r"`mesh.data` must be a positive integer or -1 .*; got True"):
        config_lib.mesh_size({"data": True}, 1)
