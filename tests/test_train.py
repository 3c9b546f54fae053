"""The training library: the loss falls, batches are pure functions of (seed, step), one trace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import stn_jax
from stn_jax.digits import datasets, train


@pytest.fixture(scope="module")
def digits():
  (x, y), _ = datasets.load_digits()
  return jnp.asarray(x[:256]), jnp.asarray(y[:256])


def _setup(config):
  model = train.create_model(config)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = train.create_optimizer(config, params)
  return graphdef, params, rest, tx


def _loss(graphdef, params, rest, images, labels):
  logits, _ = nnx.merge(graphdef, params, rest)(images)
  return float(train._loss(logits, labels)[0])


@pytest.mark.parametrize("model", train.MODELS)
def test_a_few_steps_lower_the_loss_and_compile_once(digits, model):
  config = train.Config(task="r", model=model, steps=12, batch_size=32, lr=3e-3, warmup_steps=0)
  graphdef, params, rest, tx = _setup(config)
  opt_state = tx.init(params)
  key = jax.random.key(0)
  images, labels = train.batch_for_step("r", key, 0, *digits, 32)
  before = _loss(graphdef, params, rest, images, labels)
  step = train.make_train_step(graphdef, rest, tx, config)
  params, opt_state, loss, _ = step(params, opt_state, *digits, key, 0)
  # The step index is traced: one compilation for the whole run. Counted through
  # jax.monitoring (the jit's own C++ cache size depends on which tests ran before).
  compiles, counting = [], [True]
  jax.monitoring.register_event_duration_secs_listener(
    lambda event, *_, **__: counting[0] and compiles.append(event)
  )
  for i in range(1, config.steps):
    # Two batches in turn (steps 0 and 1): a fixed target that 12 steps visibly fit, and
    # a step index that changes value without recompiling.
    params, opt_state, loss, _ = step(params, opt_state, *digits, key, i % 2)
  counting[0] = False
  assert [e for e in compiles if e.endswith("backend_compile_duration")] == []
  assert np.isfinite(float(loss))
  assert _loss(graphdef, params, rest, images, labels) < 0.8 * before


def test_batch_depends_only_on_seed_and_step(digits):
  key = jax.random.key(5)
  a = train.batch_for_step("rts", key, 7, *digits, 8)
  b = train.batch_for_step("rts", key, 7, *digits, 8)
  c = train.batch_for_step("rts", key, 8, *digits, 8)
  assert a[0].shape == (8, 42, 42, 1) and a[1].shape == (8,)
  assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
  assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("loc_lr_scale", [0.3, 1.0])
def test_transformer_gets_the_scaled_learning_rate(loc_lr_scale):
  # AdamW's first step (no warmup) is -lr * (g / (|g| + eps) + weight_decay * p) per entry,
  # with lr = loc_lr_scale * peak_lr for the transformer (under "stn") and peak_lr for the
  # classifier: the oracle below, written from that formula.
  config = train.Config(
    task="rts", model="st-cnn", steps=10, warmup_steps=0, loc_lr_scale=loc_lr_scale
  )
  _, params, _, tx = _setup(config)
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(0)
  grads = jax.tree.unflatten(
    treedef, [jnp.asarray(rng.normal(size=p.shape), p.dtype) for p in leaves]
  )
  updates, _ = tx.update(grads, tx.init(params), params)

  def expected(lr):
    return lambda g, p: -lr * (g / (np.abs(g) + 1e-8) + config.weight_decay * p)

  for part, lr in [("stn", loc_lr_scale * config.peak_lr), ("cnn", config.peak_lr)]:
    want = jax.tree.map(expected(lr), grads[part], params[part])
    got = updates[part]
    assert len(jax.tree.leaves(got)) > 1, part
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9 * lr)


def test_st_cnn_starts_at_identity_and_downsamples():
  config = train.Config(task="rts", model="st-cnn")
  model = train.create_model(config)
  x = jnp.zeros((2, 42, 42, 1), jnp.float32)
  logits, V = model(x)
  assert logits.shape == (2, 10) and V.shape == (2, 28, 28, 1)
  _, theta = model.stn(x)
  np.testing.assert_allclose(theta, jnp.broadcast_to(jnp.eye(2, 3), (2, 2, 3)))


def test_antialiased_st_cnn_samples_its_view_with_antialias():
  # --st-output 14 on RTS: at the identity the transformer zooms out 3x.
  config = train.Config(task="rts", model="st-cnn", st_output=14, antialias=True)
  model = train.create_model(config)
  x = jnp.asarray(np.random.default_rng(0).random((2, 42, 42, 1)), jnp.float32)
  logits, V = model(x)
  assert logits.shape == (2, 10) and V.shape == (2, 14, 14, 1)
  _, theta = model.stn(x)
  want = stn_jax.sample(x, stn_jax.make_grid(theta, (14, 14)), antialias=True)
  np.testing.assert_allclose(V, want, rtol=0, atol=8 * float(jnp.finfo(jnp.float32).eps))
  plain = stn_jax.sample(x, stn_jax.make_grid(theta, (14, 14)))
  assert float(jnp.max(jnp.abs(V - plain))) > 0.05  # the option is not ignored


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    ({"model": "cnn", "antialias": True}, "antialias needs an 'st-' model; got 'cnn'"),
    ({"st_output": 0}, "st_output must be >= 1; got 0"),
    ({"task": "xyz"}, "task must be one of"),
    ({"model": "mlp"}, "model must be one of"),
    ({"steps": 0}, "steps must be >= 1; got 0"),
    ({"lr": -1.0}, "lr must be > 0; got -1.0"),
  ],
)
def test_bad_config(kwargs, message):
  with pytest.raises(ValueError, match=message):
    train.Config(**kwargs)
