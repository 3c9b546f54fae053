"""Checkpoints record who wrote them; one from an incompatible stn_jax says so in one line."""

import functools
import json
import re
import shutil

import pytest

import stn_jax
from stn_jax.digits import checkpoints, cli, models, train

CONFIG = train.Config(
  task="r", model="cnn", steps=3, batch_size=8, test_copies=1, checkpoint_every=2, log_every=1
)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
  """A run stopped after step 2, whose only checkpoint is step 2."""
  workdir = tmp_path_factory.mktemp("run") / "run"
  train.train_and_evaluate(CONFIG, str(workdir), stop_after=2, progress=False)
  return workdir


@pytest.fixture
def run(stopped_run, tmp_path):
  """A private copy of the stopped run, to tamper with."""
  return shutil.copytree(stopped_run, tmp_path / "run")


def _log_file(workdir):
  # Orbax keeps a JSON item in the file "metadata" of the item's folder.
  return workdir / checkpoints.CHECKPOINT_DIR / "2" / "history" / "metadata"


def _edit_log(workdir, **changes):
  path = _log_file(workdir)
  log = json.loads(path.read_text())
  for key, value in changes.items():
    if value is None:
      log.pop(key)
    else:
      log[key] = value
  path.write_text(json.dumps(log))


def test_a_checkpoint_records_the_version_and_the_model(stopped_run):
  log = json.loads(_log_file(stopped_run).read_text())
  assert log["stn_jax_version"] == stn_jax.__version__
  assert log["checkpoint_format"] == checkpoints.CHECKPOINT_FORMAT == 1
  assert log["model"] == {"task": "r", "model": "cnn", "transform": "affine"}
  assert [h["step"] for h in log["history"]] == [1, 2]


def test_another_checkpoint_format_is_named_in_one_line(run, capsys):
  _edit_log(run, stn_jax_version="9.0.0", checkpoint_format=2)
  expected = (
    "written by stn_jax 9.0.0 (checkpoint format 2) and this is "
    f"stn_jax {stn_jax.__version__} (checkpoint format 1)"
  )
  with pytest.raises(train.IncompatibleCheckpointError, match=re.escape(expected)) as e:
    train.restore_model(str(run))
  assert "install stn_jax==9.0.0" in str(e.value)
  with pytest.raises(train.IncompatibleCheckpointError, match="9.0.0"):
    train.train_and_evaluate(CONFIG, str(run), resume=True, progress=False)
  # The command line: one line, exit 2.
  assert cli.main(["evaluate", "--out", str(run)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and expected in err


def test_changed_parameters_name_the_writing_version(run, monkeypatch):
  # A later version whose CNN lost a convolution cannot read this checkpoint...
  monkeypatch.setattr(models, "CNN", functools.partial(models.CNN, channels=(16, 32, 64)))
  _edit_log(run, stn_jax_version="0.0.9")
  with pytest.raises(train.IncompatibleCheckpointError) as e:
    train.restore_model(str(run))
  message = str(e.value)
  assert "written by stn_jax 0.0.9 (checkpoint format 1)" in message
  assert "whose model's parameters differ" in message and "\n" not in message
  # ...while the same version failing to read it means a damaged checkpoint.
  _edit_log(run, stn_jax_version=stn_jax.__version__)
  with pytest.raises(train.CheckpointReadError, match="delete that folder") as e:
    train.restore_model(str(run))
  assert not isinstance(e.value, train.IncompatibleCheckpointError)


def test_a_checkpoint_of_another_model_is_refused(run):
  _edit_log(run, model={"task": "r", "model": "st-cnn", "transform": "tps"})
  with pytest.raises(train.IncompatibleCheckpointError, match="the saved model is"):
    train.restore_model(str(run))


def test_checkpoints_from_before_versions_were_recorded_still_load(run):
  _edit_log(run, stn_jax_version=None, checkpoint_format=None, model=None)
  model, step = train.restore_model(str(run))
  assert step == 2 and model.cnn is not None
