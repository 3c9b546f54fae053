"""The training progress bar counts finished steps, never dispatched ones, and keeps the
queue full: ``train._FinishedSteps`` with stand-in step outputs whose completion the test
controls (a step finishes when the device would finish it, or when the loop waits on it)."""

import numpy as np
import pytest

from stn_jax.digits import train


class Output:
  """A step's output: ready once the 'device' finished it or the host waited for it."""

  def __init__(self):
    self.ready = self.waited = False

  def is_ready(self):
    return self.ready

  def block_until_ready(self):
    # Returns when the step is done; `waited` records that the host had to wait for it.
    self.waited = self.waited or not self.ready
    self.ready = True
    return self


class Bar:
  """A tqdm stand-in that checks each update against the steps actually finished."""

  def __init__(self, outputs):
    self.n, self.outputs = 0, outputs

  def update(self, k):
    self.n += k
    finished = sum(o.ready for o in self.outputs)
    assert self.n <= finished, f"bar at {self.n} with {finished} steps finished"


@pytest.mark.parametrize("lag", [1, 2, 4])
def test_bar_counts_finished_steps_and_keeps_the_queue_full(lag):
  rng = np.random.default_rng(0)
  outputs: list[Output] = []
  bar = Bar(outputs)
  finished = train._FinishedSteps(bar, lag=lag)
  for i in range(40):
    outputs.append(Output())
    # The device finishes the oldest unfinished steps at random moments, in order.
    for o in [o for o in outputs[:-1] if not o.ready][: rng.integers(0, 3)]:
      o.ready = True
    finished.dispatched(outputs[-1])
    # The newest `lag` steps were never waited on: the host does not serialise them.
    assert not any(o.waited for o in outputs[max(0, i - lag + 1) :])
    # Everything older than that is finished and counted.
    assert bar.n >= i + 1 - lag and len(finished.queue) <= lag
    # And each counted step is finished (Bar.update checks it), counted in order.
    assert all(o.ready for o in outputs[: bar.n])
  finished.drain()
  assert bar.n == 40 and all(o.ready for o in outputs) and not finished.queue


def test_ready_steps_are_counted_without_waiting():
  outputs = [Output() for _ in range(3)]
  bar = Bar(outputs)
  finished = train._FinishedSteps(bar, lag=8)
  for o in outputs:
    o.ready = True
    finished.dispatched(o)
  assert bar.n == 3 and not any(o.waited for o in outputs)


def test_train_loop_counts_every_step_once():
  # The wiring: a short real run ends with the bar at the last step, each counted once
  # (a logging step every 2 drains the window in between).
  config = train.Config(task="r", model="cnn", steps=100, batch_size=8, log_every=2)
  data = train.load_data(config, test=False)

  class Recorder:
    n = 0

    def update(self, k):
      self.n += k

    def set_postfix(self, **_):
      pass

  bar = Recorder()
  state = train.create_train_state(config)
  state, _ = train.train_loop(state, config, data, end=5, mngr=None, log=train.TrainLog(), bar=bar)
  assert bar.n == 5 == int(state.step)
