"""Training example: CNN vs ST-CNN on the distorted digits (Flax ``examples/mnist`` style).

Library-like: :func:`train_and_evaluate` runs one experiment into a work directory
(metrics, figure, orbax checkpoints) and :func:`evaluate_workdir` re-scores a saved one;
:mod:`stn_jax.digits.cli` only parses arguments and calls them.

Determinism: parameters are initialised from ``seed``; the batch of step ``i`` is drawn
from ``fold_in(key(seed), i)`` alone (which training digits, and a fresh distortion of
each), so a run resumed from a checkpoint retraces an uninterrupted one exactly. The test
set is a fixed :func:`stn_jax.digits.datasets.make_dataset` of held-out digits from
``data_seed``.

Faults: checkpoints are orbax's, written to a temporary folder and renamed when complete,
so a run killed at any moment (even mid-save) resumes from its last complete checkpoint
and ends exactly as an uninterrupted run would. A checkpoint that cannot be written (full
disk, unwritable folder) raises :class:`CheckpointWriteError` and one that cannot be read
:class:`CheckpointReadError` (:class:`IncompatibleCheckpointError` when another version of
stn_jax wrote it); each message is one line, and the earlier checkpoints are left as they
were. See :mod:`stn_jax.digits.checkpoints`.

Layout, as in the Flax examples: :func:`create_train_state` builds a :class:`TrainState`
(step, parameters, optimizer state), :func:`train_step` is one pure update,
:func:`train_loop` runs the steps with logging and checkpoints, :func:`evaluate` scores a
model and :func:`train_and_evaluate` drives them.

Data parallelism: with ``data_parallel="on"`` (or ``"auto"`` and more than one device),
:func:`make_mesh` builds a 1-D :class:`jax.sharding.Mesh` over every device with the axis
``"batch"``. Parameters, optimizer state and the digits are replicated
(``NamedSharding(mesh, P())``); the step's batch is constrained to
``NamedSharding(mesh, P("batch"))``, so each device distorts and differentiates its slice
of the batch and XLA all-reduces the gradients. ``batch_size`` must divide by the device
count. Results equal single-device training up to float32 round-off (the gradient sums
are reduced in another order).

Multi-host: start the same command on every host, with ``jax.distributed.initialize()``
called before anything else touches JAX (on Cloud TPU and SLURM it finds its peers itself;
elsewhere pass ``coordinator_address``, ``num_processes`` and ``process_id``), and
``--out`` on a filesystem all hosts share. ``jax.devices()`` then lists every host's
devices, the mesh spans them all, and each process generates the same global batch
inside the jitted step (a pure function of ``(seed, step)``), so no host feeds data to
another. Orbax writes the checkpoints collectively; only process 0 writes
``config.json``, ``metrics.json`` and the figure. On each host::

  import jax
  jax.distributed.initialize()  # first, before any computation

  from stn_jax import cli
  cli.main(["train", "--out", "/shared/run", "--batch-size", "256"])

Needs the ``demo`` extra (orbax-checkpoint, tqdm, matplotlib, scikit-learn).
"""

import collections
import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from stn_jax._src import validation
from stn_jax._src.validation import DATA_PARALLEL as DATA_PARALLEL
from stn_jax._src.validation import TRANSFORMS
from stn_jax.digits import checkpoints, datasets
from stn_jax.digits.checkpoints import CHECKPOINT_DIR as CHECKPOINT_DIR
from stn_jax.digits.checkpoints import CheckpointError as CheckpointError
from stn_jax.digits.checkpoints import CheckpointReadError as CheckpointReadError
from stn_jax.digits.checkpoints import CheckpointWriteError as CheckpointWriteError
from stn_jax.digits.checkpoints import IncompatibleCheckpointError as IncompatibleCheckpointError
from stn_jax.digits.models import CNN as CNN
from stn_jax.digits.models import MODELS as MODELS
from stn_jax.digits.models import Classifier as Classifier

# Peak learning rates on RTS, batch 128, weight decay 0.1, seed 0, measured with the default
# models: the CNN is sensitive to it: 1200 steps at 5e-3 / 1e-2 / 2e-2
# gave 1.90% / 1.73% / 2.27% test error; 3000 ST-CNN steps at 2e-3 / 4e-3 gave 0.73% / 0.97%.
# The FCNs' 1e-3 is Adam's usual rate, untuned (they exist for benchmarks/paper_table1.py).
DEFAULT_LR = {"cnn": 1e-2, "st-cnn": 2e-3, "fcn": 1e-3, "st-fcn": 1e-3}

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
EVAL_FILE = "eval.json"
FIGURE_FILE = "transformer.png"
BATCH_AXIS = "batch"


@dataclasses.dataclass(frozen=True)
class Config:
  """One experiment.

  Attributes:
    task: a :data:`stn_jax.digits.datasets.TASKS` distortion.
    model: one of :data:`MODELS` (``"cnn"``, ``"st-cnn"``, ``"fcn"``, ``"st-fcn"``).
    transform: the transformer's family (``"st-"`` models only).
    st_output: side of the square view the transformer samples (``"st-"`` models only);
      the paper's 28. Smaller makes the transformer zoom out.
    antialias: the transformer samples with ``antialias=True`` (``"st-"`` models only).
    steps: optimisation steps.
    batch_size: examples per step.
    lr: peak learning rate; ``None`` takes :data:`DEFAULT_LR` for the model.
    loc_lr_scale: the transformer's learning rate relative to ``lr``. About 0.3: at the
      full rate theta collapsed onto a fixed crop, at 0.1 it barely moved.
    weight_decay: AdamW's decoupled weight decay (for the RTS CNN, 0.1 beat 1e-4 and 0.5).
    warmup_steps: linear warmup before the cosine decay (capped at a tenth of ``steps``).
    seed: initialisation and batch order.
    data_seed: the test set's distortions (the same across training seeds, so that seeds
      are compared on one test set).
    test_copies: distortions per held-out digit in the test set.
    checkpoint_every: steps between checkpoints (one is also written at the end).
    log_every: steps between logged training metrics.
    data_dir: local MNIST IDX files instead of the bundled digits.
  """

  task: str = "rts"
  model: str = "st-cnn"
  transform: str = "affine"
  st_output: int = 28
  antialias: bool = False
  steps: int = 2000
  batch_size: int = 128
  lr: float | None = None
  loc_lr_scale: float = 0.3
  weight_decay: float = 0.1
  warmup_steps: int = 100
  seed: int = 0
  data_seed: int = 0
  test_copies: int = 10
  checkpoint_every: int = 500
  log_every: int = 50
  data_dir: str | None = None

  def __post_init__(self):
    def check(ok: bool, what: str, got: Any) -> None:
      if not ok:
        raise ValueError(f"{what}; got {got!r}.")

    for name, allowed in (("task", datasets.TASKS), ("model", MODELS), ("transform", TRANSFORMS)):
      check(getattr(self, name) in allowed, f"{name} must be one of {allowed}", getattr(self, name))
    positive = ("st_output", "steps", "batch_size", "test_copies", "checkpoint_every", "log_every")
    for name in positive:
      check(getattr(self, name) >= 1, f"{name} must be >= 1", getattr(self, name))
    check(self.warmup_steps >= 0, "warmup_steps must be >= 0", self.warmup_steps)
    check(self.lr is None or self.lr > 0, "lr must be > 0", self.lr)
    check(self.loc_lr_scale > 0, "loc_lr_scale must be > 0", self.loc_lr_scale)
    st = self.model.startswith("st-")
    check(st or not self.antialias, "antialias needs an 'st-' model", self.model)

  @property
  def peak_lr(self) -> float:
    return DEFAULT_LR[self.model] if self.lr is None else self.lr

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def create_model(config: Config) -> Classifier:
  """The classifier for ``config``, initialised from ``config.seed``."""
  shape = datasets.IMAGE_SHAPES[config.task]
  return Classifier(
    shape,
    model=config.model,
    transform=config.transform,
    st_output_shape=(config.st_output, config.st_output),
    antialias=config.antialias,
    rngs=nnx.Rngs(config.seed),
  )


def _param_labels(params: nnx.State) -> Any:
  def label(path: tuple[Any, ...], _: Any) -> str:
    return "localisation" if getattr(path[0], "key", None) == "stn" else "classifier"

  return jax.tree_util.tree_map_with_path(label, params)


def create_optimizer(config: Config, params: nnx.State) -> optax.GradientTransformation:
  """AdamW with warmup and cosine decay; the transformer's parameters at a scaled rate.

  Args:
    config: the experiment.
    params: the model's ``nnx.Param`` state; everything under ``stn`` (the localisation
      net and its regression head) gets ``loc_lr_scale`` times the rate.

  Returns:
    An ``optax`` transformation over ``params``.
  """
  warmup = min(config.warmup_steps, config.steps // 10)
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, config.peak_lr, warmup, max(config.steps, warmup + 1)
  )

  def scaled(count: jax.Array) -> jax.Array:
    return config.loc_lr_scale * schedule(count)

  return optax.multi_transform(
    {
      "classifier": optax.adamw(schedule, weight_decay=config.weight_decay),
      "localisation": optax.adamw(scaled, weight_decay=config.weight_decay),
    },
    _param_labels(params),
  )


def load_data(config: Config, *, test: bool = True) -> dict[str, np.ndarray]:
  """Training digits (undistorted: batches are distorted on the fly) and the test set.

  Args:
    config: the experiment.
    test: also generate the test set (``test_images``, ``test_labels``).
  """
  if config.data_dir is None:
    (digits, labels), _ = datasets.load_digits()
  else:
    (digits, labels), _ = datasets.load_mnist_idx(config.data_dir)
  data = {"digits": digits, "labels": labels}
  if test:
    data.update(load_test_data(config))
  return data


def load_test_data(config: Config) -> dict[str, np.ndarray]:
  """The fixed test set: ``test_copies`` distortions of each held-out digit."""
  images, labels = datasets.make_dataset(
    config.task, "test", seed=config.data_seed, copies=config.test_copies, data_dir=config.data_dir
  )
  return {"test_images": images, "test_labels": labels}


def batch_for_step(
  task: str, key: jax.Array, step: jax.Array, digits: jax.Array, labels: jax.Array, batch_size: int
) -> tuple[jax.Array, jax.Array]:
  """The training batch of ``step``: a pure function of ``(key, step)`` and the digits."""
  k_index, k_distort = jax.random.split(jax.random.fold_in(key, step))
  index = jax.random.randint(k_index, (batch_size,), 0, digits.shape[0], jnp.int32)
  images = datasets.distort(task, k_distort, digits[index], pool=digits)
  return images, labels[index]


def _loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  correct = jnp.sum(jnp.argmax(logits, axis=-1) == labels)
  return loss, correct


def mesh_devices(data_parallel: str = "auto") -> int | None:
  """How many devices :func:`make_mesh` splits the batch over, or ``None`` for no mesh.

  Raises:
    ValueError: ``data_parallel`` is not one of :data:`DATA_PARALLEL`.

  >>> mesh_devices("off") is None
  True
  """
  validation.check_data_parallel(data_parallel)
  n = jax.device_count()
  if data_parallel == "off" or (data_parallel == "auto" and n == 1):
    return None
  return n


def make_mesh(data_parallel: str = "auto", batch_size: int | None = None) -> Mesh | None:
  """The data-parallel mesh: every device along one ``"batch"`` axis, or ``None``.

  Args:
    data_parallel: ``"auto"`` (a mesh when more than one device is visible), ``"on"``
      (a mesh even over one device) or ``"off"`` (``None``: single-device training).
    batch_size: checked to divide by the device count when a mesh is returned.

  Returns:
    A :class:`jax.sharding.Mesh` of shape ``(jax.device_count(),)`` or ``None``.

  Raises:
    ValueError: an unknown ``data_parallel`` or a batch that does not divide.

  >>> make_mesh("off") is None
  True
  >>> make_mesh("on", 8).axis_names
  ('batch',)
  """
  n = mesh_devices(data_parallel)
  if n is None:
    return None
  if batch_size is not None:
    validation.check_batch_divides(batch_size, n, switch_off="data_parallel='off'")
  # Auto axes: XLA's partitioner places what the sharding constraints leave open.
  return jax.make_mesh((n,), (BATCH_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


class TrainState(struct.PyTreeNode):
  """What a training step reads and writes: a pytree, so it passes through ``jax.jit``.

  Attributes:
    step: steps taken so far; the next batch is :func:`batch_for_step` of this index.
    params: the model's ``nnx.Param`` state.
    opt_state: the optimizer's state.
    rest: the model's other state (empty for the digits models).
    graphdef: the model's structure (static).
    tx: the optimizer (static).
  """

  step: jax.Array
  params: nnx.State
  opt_state: Any
  rest: nnx.State
  graphdef: nnx.GraphDef = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  def model(self) -> Classifier:
    """The model with the current parameters."""
    return nnx.merge(self.graphdef, self.params, self.rest)


def create_train_state(config: Config) -> TrainState:
  """A fresh :class:`TrainState` at step 0: the model of ``config`` and its optimizer.

  >>> state = create_train_state(Config(task="r", model="cnn"))
  >>> int(state.step), sorted(state.params.keys())
  (0, ['cnn'])
  """
  graphdef, params, rest = nnx.split(create_model(config), nnx.Param, ...)
  tx = create_optimizer(config, params)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    rest=rest,
    graphdef=graphdef,
    tx=tx,
  )


def train_step(
  state: TrainState, images: jax.Array, labels: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One AdamW update on a batch: pure, so it can be jitted, sharded or vmapped.

  Returns:
    The next state and ``{"loss": mean cross-entropy, "correct": count}`` of the batch
    (before the update).
  """

  def loss_fn(params: nnx.State) -> tuple[jax.Array, jax.Array]:
    logits, _ = nnx.merge(state.graphdef, params, state.rest)(images)
    return _loss(logits, labels)

  (loss, correct), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  state = state.replace(
    step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
  )
  return state, {"loss": loss, "correct": correct}


def jit_train_step(config: Config, *, mesh: Mesh | None = None) -> Callable[..., Any]:
  """A jitted ``step(state, digits, labels, key) -> (state, metrics)``.

  The step draws its own batch (:func:`batch_for_step` of ``state.step``), so a run is a
  pure function of the seed; the index is traced, so it compiles once for the whole run.

  Args:
    config: the experiment (task and batch size).
    mesh: data-parallel over this :func:`make_mesh` mesh: every argument and output
      replicated, the batch split along ``"batch"``. ``None``: one device.
  """
  if mesh is None:
    jit, split_batch = jax.jit, lambda x: x
  else:
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(BATCH_AXIS))
    jit = functools.partial(jax.jit, in_shardings=replicated, out_shardings=replicated)

    def split_batch(x: jax.Array) -> jax.Array:
      return jax.lax.with_sharding_constraint(x, batch_sharding)

  @jit
  def step(state, digits, labels, key):
    images, targets = batch_for_step(
      config.task, key, state.step, digits, labels, config.batch_size
    )
    return train_step(state, split_batch(images), split_batch(targets))

  return step


def make_train_step(
  graphdef: nnx.GraphDef,
  rest: nnx.State,
  tx: optax.GradientTransformation,
  config: Config,
  *,
  mesh: Mesh | None = None,
) -> Callable[..., Any]:
  """A jitted ``step(params, opt_state, digits, labels, key, i)`` over loose arrays.

  :func:`jit_train_step` for callers that keep the parameters and the optimizer state
  apart; returns ``(params, opt_state, loss, correct)``.

  Args:
    graphdef: the model's structure.
    rest: the model's non-parameter state.
    tx: the optimizer.
    config: the experiment.
    mesh: as in :func:`jit_train_step`.
  """
  jitted = jit_train_step(config, mesh=mesh)

  def step(params, opt_state, digits, labels, key, i):
    i = jnp.asarray(i, jnp.int32)
    state = TrainState(i, params, opt_state, rest, graphdef=graphdef, tx=tx)
    state, metrics = jitted(state, digits, labels, key)
    return state.params, state.opt_state, metrics["loss"], metrics["correct"]

  return step


@functools.partial(jax.jit, static_argnums=0)
def _eval_batch(graphdef, params, rest, images, labels, mask):
  logits, _ = nnx.merge(graphdef, params, rest)(images)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  wrong = (jnp.argmax(logits, axis=-1) != labels) & mask
  return jnp.sum(jnp.where(mask, losses, jnp.zeros_like(losses))), jnp.sum(wrong)


def evaluate(
  graphdef: nnx.GraphDef,
  params: nnx.State,
  rest: nnx.State,
  images: np.ndarray,
  labels: np.ndarray,
  *,
  batch_size: int = 500,
) -> dict[str, float]:
  """Test loss and error (fraction misclassified) of the model on ``images``."""
  total_loss, total_wrong, n = 0.0, 0, len(images)
  for start in range(0, n, batch_size):
    x, y = images[start : start + batch_size], labels[start : start + batch_size]
    pad = batch_size - len(x)
    mask = np.arange(batch_size) < len(x)
    # Pad the last batch so every call has the same shape (one compilation).
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    y = np.concatenate([y, np.zeros((pad,), y.dtype)])
    loss, wrong = _eval_batch(graphdef, params, rest, x, y, mask)
    total_loss += float(loss)
    total_wrong += int(wrong)
  return {"test_loss": total_loss / n, "test_error": total_wrong / n, "test_wrong": total_wrong}


def save_figure(model: Classifier, images: np.ndarray, labels: np.ndarray, path: str) -> None:
  """A PNG of inputs (top) beside the transformer's outputs (bottom), with predictions."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  logits, V = model(jnp.asarray(images))
  predictions = np.asarray(jnp.argmax(logits, axis=-1))
  rows = 1 if V is None else 2
  cols = len(images)
  fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.6 * rows), squeeze=False)
  for j in range(cols):
    axes[0, j].imshow(images[j, ..., 0], cmap="gray", vmin=0, vmax=1)
    axes[0, j].set_title(f"{labels[j]} -> {predictions[j]}", fontsize=8)
    if V is not None:
      axes[1, j].imshow(np.asarray(V[j, ..., 0]), cmap="gray", vmin=0, vmax=1)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  axes[0, 0].set_ylabel("input", fontsize=8)
  if V is not None:
    axes[1, 0].set_ylabel("transformer", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def read_config(workdir: str) -> Config:
  """The :class:`Config` saved in ``workdir``.

  Raises:
    FileNotFoundError: ``workdir`` holds no run.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no run in {workdir!r}: expected {CONFIG_FILE} written by `train`.")
  with open(path) as f:
    return Config(**json.load(f))


def _write_json(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def _check_workdir(config: Config, workdir: str, *, resume: bool) -> None:
  """Creates ``workdir``; an existing run there must be resumed, with the same config."""
  os.makedirs(workdir, exist_ok=True)
  if not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    return
  saved = read_config(workdir)
  if not resume:
    raise FileExistsError(
      f"{workdir!r} already holds a run; pass --resume to continue it or choose another --out."
    )
  if saved != config:
    changed = [
      f.name
      for f in dataclasses.fields(Config)
      if getattr(saved, f.name) != getattr(config, f.name)
    ]
    raise FileExistsError(
      f"cannot resume {workdir!r}: expected the settings it was started with; got different "
      f"{', '.join(changed)}."
    )


@dataclasses.dataclass
class TrainLog:
  """Training metrics: one ``history`` entry per ``log_every`` steps.

  Attributes:
    history: ``{"step", "loss", "accuracy"}`` of each finished logging window.
    pending: ``(loss, correct)`` of the steps of the window in progress (device arrays
      until fetched), saved with a checkpoint so that a resumed window is whole.
  """

  history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  pending: list[Any] = dataclasses.field(default_factory=list)

  @classmethod
  def from_json(cls, log: dict[str, Any]) -> "TrainLog":
    pending = [(np.float32(loss), np.int64(c)) for loss, c in log["pending"]]
    return cls(list(log["history"]), pending)

  def to_json(self) -> dict[str, Any]:
    window = [(float(loss), int(c)) for loss, c in jax.device_get(self.pending)]
    return {"history": self.history, "pending": window}

  def close_window(self, step: int, batch_size: int) -> dict[str, Any]:
    losses, corrects = zip(*jax.device_get(self.pending), strict=True)
    entry = {
      "step": step,
      "loss": float(np.mean(losses)),
      "accuracy": float(np.sum(corrects)) / (batch_size * len(self.pending)),
    }
    self.history.append(entry)
    self.pending = []
    return entry


def _restore_state(mngr, state: TrainState, config: Config, sharding) -> tuple[TrainState, Any]:
  target = {"params": state.params, "opt_state": state.opt_state}
  saved, log = checkpoints.restore(mngr, target, config, sharding=sharding)
  step = jnp.asarray(mngr.latest_step(), jnp.int32)
  return state.replace(step=step, params=saved["params"], opt_state=saved["opt_state"]), log


def _save_state(mngr, state: TrainState, log: TrainLog, config: Config) -> None:
  jax.block_until_ready(state.params)
  saved = {"params": state.params, "opt_state": state.opt_state}
  checkpoints.save(mngr, int(state.step), saved, log.to_json(), config)


def train_loop(
  state: TrainState,
  config: Config,
  data: dict[str, np.ndarray],
  *,
  end: int,
  mngr,
  log: TrainLog,
  mesh: Mesh | None = None,
  bar: Any = None,
) -> tuple[TrainState, float | None]:
  """Steps ``state`` up to step ``end``, logging and checkpointing on the way.

  Returns:
    The final state and the steps per second after the first (compiling) step, or
    ``None`` if at most one step ran.
  """
  step_fn = jit_train_step(config, mesh=mesh)
  digits, labels = jnp.asarray(data["digits"]), jnp.asarray(data["labels"])
  key = jax.random.fold_in(jax.random.key(config.seed), 1)
  start, tick, timed = int(state.step), time.perf_counter(), 0
  finished = None if bar is None else _FinishedSteps(bar)
  for done in range(start + 1, end + 1):
    state, metrics = step_fn(state, digits, labels, key)
    log.pending.append((metrics["loss"], metrics["correct"]))
    if finished is not None:
      finished.dispatched(metrics["loss"])
    if done % config.log_every == 0 or done == config.steps:
      entry = log.close_window(done, config.batch_size)
      if bar is not None:
        bar.set_postfix(loss=f"{entry['loss']:.4f}", acc=f"{entry['accuracy']:.4f}")
    if done % config.checkpoint_every == 0 or done == config.steps:
      _save_state(mngr, state, log, config)
    if done == start + 1:
      # The first step compiles; time the rest.
      jax.block_until_ready(state.params)
      tick = time.perf_counter()
    else:
      timed += 1
  if finished is not None:
    finished.drain()
  jax.block_until_ready(state.params)
  return state, (timed / (time.perf_counter() - tick) if timed else None)


class _FinishedSteps:
  """Advances a progress bar as training steps finish, not as they are dispatched.

  JAX returns from a step as soon as it is queued, so a bar advanced per call races ahead
  of the device and then stalls wherever the loop waits for results (each logging step),
  and its rate and ETA swing. Here the bar counts a step when its output (``marker``, e.g.
  the loss) is ready: ready ones are counted as seen, and the loop waits for step
  ``i - lag`` after dispatching step ``i``, so at most ``lag`` steps are ahead of the bar
  and the queue stays full (the host dispatches while the device runs the queued steps).
  """

  def __init__(self, bar: Any, lag: int = 2):
    self.bar, self.lag = bar, lag
    self.queue: collections.deque = collections.deque()

  def dispatched(self, marker: Any) -> None:
    """Step dispatched; ``marker`` is an output of it, ready when the step is done."""
    self.queue.append(marker)
    while self.queue and (len(self.queue) > self.lag or self.queue[0].is_ready()):
      self.queue.popleft().block_until_ready()
      self.bar.update(1)

  def drain(self) -> None:
    """Waits for every dispatched step, counting each as it finishes."""
    while self.queue:
      self.queue.popleft().block_until_ready()
      self.bar.update(1)


def _progress_bar(config: Config, start: int, show: bool):
  if not show:
    return None
  from tqdm.auto import tqdm

  desc = f"{config.model} {config.task}"
  return tqdm(total=config.steps, initial=start, desc=desc, unit="step")


def _finish(
  state: TrainState, config: Config, data: dict[str, np.ndarray], workdir: str, writer: bool
) -> dict[str, Any]:
  """Evaluates the trained state on one device and writes the metrics and the figure."""
  state = jax.device_get(state)
  if "test_images" not in data:
    data = {**data, **load_test_data(config)}
  images, labels = data["test_images"], data["test_labels"]
  metrics: dict[str, Any] = {"config": config.to_json()}
  metrics.update(evaluate(state.graphdef, state.params, state.rest, images, labels))
  metrics["num_test_images"] = len(images)
  if writer:
    figure = os.path.join(workdir, FIGURE_FILE)
    save_figure(state.model(), images[:8], labels[:8], figure)
  return metrics


def train_and_evaluate(
  config: Config,
  workdir: str,
  *,
  resume: bool = False,
  stop_after: int | None = None,
  progress: bool = True,
  data: dict[str, np.ndarray] | None = None,
  data_parallel: str = "auto",
) -> dict[str, Any]:
  """Trains ``config`` into ``workdir`` and evaluates it on the held-out test set.

  Writes ``config.json``, orbax checkpoints under ``checkpoints/`` (every
  ``checkpoint_every`` steps and at the end), and at the end ``metrics.json`` and the
  figure ``transformer.png``.

  Args:
    config: the experiment.
    workdir: output folder (created).
    resume: continue from the latest checkpoint in ``workdir`` (same optimizer state and
      data order); the saved config must equal ``config``. Without a checkpoint it starts
      afresh.
    stop_after: stop after this many steps (in total) without finishing, as if the run
      were interrupted; for testing ``resume``.
    progress: show a tqdm progress bar.
    data: the output of :func:`load_data`, to share it between runs.
    data_parallel: ``"auto"``, ``"on"`` or ``"off"``; see :func:`make_mesh`. Not part of
      the config: a run may resume on another number of devices.

  Returns:
    The metrics, also written to ``metrics.json`` (``None`` values if stopped early).

  Raises:
    FileExistsError: ``workdir`` holds a run and ``resume`` is False, or a different run.
    ValueError: ``batch_size`` does not divide by the device count (data-parallel).
    CheckpointWriteError: a checkpoint cannot be written (one-line message).
    CheckpointReadError: the checkpoint to resume from cannot be read (one-line message).
    OSError: ``workdir`` cannot be written.
  """
  mesh = make_mesh(data_parallel, config.batch_size)
  # Files other than checkpoints are written by one process (multi-host: a shared folder).
  writer = jax.process_index() == 0
  _check_workdir(config, workdir, resume=resume)
  if writer:
    _write_json(os.path.join(workdir, CONFIG_FILE), config.to_json())
  # The test set is only generated once training is done (an interrupted run skips it).
  data = load_data(config, test=False) if data is None else data
  state, log = create_train_state(config), TrainLog()
  replicated = None if mesh is None else NamedSharding(mesh, P())
  if replicated is not None and jax.process_count() == 1:
    # Fresh parameters live on one device; a multi-host run restores onto the mesh instead.
    state = jax.device_put(state, replicated)
  end = config.steps if stop_after is None else min(config.steps, stop_after)
  mngr, bar = checkpoints.manager(workdir), None
  try:
    if resume and mngr.latest_step() is not None:
      state, saved_log = _restore_state(mngr, state, config, replicated)
      log = TrainLog.from_json(saved_log)
    start = int(state.step)
    bar = _progress_bar(config, start, progress and writer)
    state, steps_per_second = train_loop(
      state, config, data, end=end, mngr=mngr, log=log, mesh=mesh, bar=bar
    )
  finally:
    if bar is not None:
      bar.close()
    mngr.close()
  if end < config.steps:
    return {"stopped_at": end, "history": log.history}
  metrics = _finish(state, config, data, workdir, writer)
  metrics["steps_per_second"] = steps_per_second
  metrics["resumed_from"] = start
  metrics["devices"] = 1 if mesh is None else mesh.size
  metrics["history"] = log.history
  if writer:
    _write_json(os.path.join(workdir, METRICS_FILE), metrics)
  return metrics


def restore_model(workdir: str) -> tuple[Classifier, int]:
  """The model of the latest checkpoint in ``workdir``, and that checkpoint's step.

  Raises:
    FileNotFoundError: ``workdir`` holds no run or no checkpoint.
    CheckpointReadError: the latest checkpoint cannot be read
      (:class:`IncompatibleCheckpointError`: another version of stn_jax wrote it).
  """
  config = read_config(workdir)
  state = create_train_state(config)
  mngr = checkpoints.manager(workdir, read_only=True)
  try:
    if mngr.latest_step() is None:
      raise FileNotFoundError(f"no checkpoint in {workdir!r}; train first.")
    state, _ = _restore_state(mngr, state, config, None)
  finally:
    mngr.close()
  return state.model(), int(state.step)


def evaluate_workdir(workdir: str) -> dict[str, Any]:
  """Restores the latest checkpoint in ``workdir`` and scores it on its test set.

  Writes ``eval.json``.

  Raises:
    FileNotFoundError: ``workdir`` holds no run or no checkpoint.
    CheckpointError: the latest checkpoint cannot be read.
  """
  config = read_config(workdir)
  model, step = restore_model(workdir)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  data = load_data(config)
  result = {"step": step, "steps": config.steps}
  result.update(evaluate(graphdef, params, rest, data["test_images"], data["test_labels"]))
  result["num_test_images"] = len(data["test_images"])
  _write_json(os.path.join(workdir, EVAL_FILE), result)
  return result
