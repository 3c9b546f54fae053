"""Orbax checkpoints of the digits experiment: atomic saves, checked restores.

A checkpoint ``checkpoints/<step>/`` holds two items: ``state`` (the parameters and the
optimizer state, orbax's standard format) and ``history``, a JSON object with the training
log (``history``, ``pending``) and what wrote it: ``stn_jax_version``,
``checkpoint_format`` (:data:`CHECKPOINT_FORMAT`) and ``model`` (the model's
configuration, :func:`model_config`).

Saves are synchronous and orbax renames a checkpoint's temporary folder only once all of
it is written, so a run killed at any moment leaves its earlier checkpoints readable. A
save that fails raises :class:`CheckpointWriteError`; a checkpoint that cannot be read
raises :class:`CheckpointReadError`, or :class:`IncompatibleCheckpointError` when it was
written by a version of stn_jax whose checkpoints this one cannot read. Every message is
one line.

Needs the ``demo`` extra (orbax-checkpoint).
"""

import os
from typing import Any

import jax

import stn_jax

# Bump when a checkpoint written before the change cannot be restored after it: the saved
# items change, or a model's parameters do (a layer added, renamed or resized). Format 0:
# checkpoints from before versions were recorded (their parameters are format 1's).
CHECKPOINT_FORMAT = 1

CHECKPOINT_DIR = "checkpoints"


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read; the message is one line."""


class CheckpointWriteError(CheckpointError):
  """A save failed (e.g. a full disk); the earlier checkpoints are intact."""


class CheckpointReadError(CheckpointError):
  """The latest checkpoint exists but cannot be read."""


class IncompatibleCheckpointError(CheckpointReadError):
  """The checkpoint was written by a version of stn_jax that this one cannot read."""


def model_config(config: Any) -> dict[str, Any]:
  """What determines a model's parameters: the fields of ``config`` that build it.

  >>> from stn_jax.digits.train import Config
  >>> model_config(Config(task="rts", model="st-cnn"))
  {'task': 'rts', 'model': 'st-cnn', 'transform': 'affine'}
  """
  return {"task": config.task, "model": config.model, "transform": config.transform}


def _writer_info(config: Any) -> dict[str, Any]:
  return {
    "stn_jax_version": stn_jax.__version__,
    "checkpoint_format": CHECKPOINT_FORMAT,
    "model": model_config(config),
  }


def manager(workdir: str, *, read_only: bool = False):
  """An orbax ``CheckpointManager`` over ``workdir/checkpoints`` keeping the last two."""
  import orbax.checkpoint as ocp

  options = ocp.CheckpointManagerOptions(
    max_to_keep=2,
    enable_async_checkpointing=False,
    read_only=read_only,
    # The trainer deletes what a killed save left behind; a reader must not, as the
    # trainer may be writing it right now.
    cleanup_tmp_directories=not read_only,
  )
  return ocp.CheckpointManager(
    os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)), options=options
  )


def one_line(e: BaseException) -> str:
  """``e``'s message on one line of at most 300 characters."""
  text = " ".join(str(e).split()) or type(e).__name__
  return text if len(text) <= 300 else text[:297] + "..."


def save(mngr, step: int, state: dict[str, Any], log: dict[str, Any], config: Any) -> None:
  """Saves ``state`` (a pytree) and the JSON ``log`` as checkpoint ``step``, synchronously.

  Raises:
    CheckpointWriteError: the save failed; the earlier checkpoints are intact.
  """
  import orbax.checkpoint as ocp

  previous = mngr.latest_step()
  try:
    mngr.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        history=ocp.args.JsonSave({**log, **_writer_info(config)}),
      ),
      force=True,
    )
    mngr.wait_until_finished()
  except Exception as e:
    # Whatever failed (a full disk surfaces as OSError from Python writes and as
    # ValueError from tensorstore's), the step was not finalized.
    kept = "no earlier checkpoint" if previous is None else f"checkpoint {previous} is intact"
    raise CheckpointWriteError(
      f"cannot write checkpoint {step} to {str(mngr.directory)!r} "
      f"({type(e).__name__}: {one_line(e)}); {kept}."
    ) from e


def _written_by(log: dict[str, Any]) -> str:
  version = log.get("stn_jax_version")
  if version is None:
    return "an stn_jax from before checkpoints recorded their version (checkpoint format 0)"
  return f"stn_jax {version} (checkpoint format {log.get('checkpoint_format')})"


def _incompatible(path: str, log: dict[str, Any], why: str) -> IncompatibleCheckpointError:
  version = log.get("stn_jax_version")
  fix = (
    f"install stn_jax=={version} to use it, or train again into another --out"
    if version
    else "train again into another --out"
  )
  return IncompatibleCheckpointError(
    f"cannot read checkpoint {path!r}: it was written by {_written_by(log)} and this is "
    f"stn_jax {stn_jax.__version__} (checkpoint format {CHECKPOINT_FORMAT}), {why}; {fix}."
  )


def _read_log(mngr, step: int, path: str) -> dict[str, Any]:
  import orbax.checkpoint as ocp

  try:
    log = mngr.restore(step, args=ocp.args.Composite(history=ocp.args.JsonRestore())).history
    if not isinstance(log, dict) or not {"history", "pending"} <= log.keys():
      raise ValueError("its training log is missing")
  except Exception as e:
    raise CheckpointReadError(
      f"cannot read checkpoint {path!r} ({type(e).__name__}: {one_line(e)}); "
      "delete that folder to resume from the checkpoint before it."
    ) from e
  return log


def restore(mngr, target: dict[str, Any], config: Any, *, sharding=None) -> tuple[Any, dict]:
  """The latest complete checkpoint: its state (shaped as ``target``) and its log.

  Orbax lists only finalized checkpoints (a save killed part-way leaves a
  ``*.orbax-checkpoint-tmp*`` folder that it skips), so what is read was written whole.

  Args:
    mngr: a :func:`manager`.
    target: a pytree of arrays shaped as the saved state.
    config: the run's configuration; its :func:`model_config` must match the saved one.
    sharding: where to place the restored arrays (default: as ``target``'s).

  Raises:
    IncompatibleCheckpointError: written by an stn_jax whose checkpoints this one cannot
      read (another checkpoint format, or another model configuration).
    CheckpointReadError: the checkpoint cannot be read (damaged).
  """
  import orbax.checkpoint as ocp

  step = mngr.latest_step()
  path = os.path.join(str(mngr.directory), str(step))
  log = _read_log(mngr, step, path)
  # Format 0 wrote what format 1 does, less the writer's information.
  if log.get("checkpoint_format", 0) not in (0, CHECKPOINT_FORMAT):
    raise _incompatible(path, log, "which reads another checkpoint format")
  saved_model = log.get("model", model_config(config))
  if saved_model != model_config(config):
    raise _incompatible(
      path, log, f"the saved model is {saved_model}, not the run's {model_config(config)}"
    )

  def abstract(x: jax.Array) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding or x.sharding)

  try:
    restored = mngr.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(jax.tree.map(abstract, target))),
    )
  except Exception as e:
    if log.get("stn_jax_version") != stn_jax.__version__:
      raise _incompatible(path, log, "whose model's parameters differ") from e
    raise CheckpointReadError(
      f"cannot read checkpoint {path!r} ({type(e).__name__}: {one_line(e)}); "
      "delete that folder to resume from the checkpoint before it."
    ) from e
  return restored.state, log
