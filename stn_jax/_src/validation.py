"""Checks and messages shared by the core, the modules and the command line.

One place for each rule, so that the functional core, the Flax and Equinox modules and
the digits experiment reject the same input with the same words. Every message says what
was expected and what was received; option strings list the allowed values.

This module imports nothing from the rest of ``stn_jax``, so every layer, the core
included, can import it without a cycle. The option tuples are defined here; the core's
``TRANSFORMS`` and ``PADDING_MODES`` are pinned equal to them by a test.

>>> check_one_of("transform", "affine", TRANSFORMS)
'affine'
>>> check_one_of("padding_mode", "wrap", PADDING_MODES)
Traceback (most recent call last):
  ...
ValueError: unknown padding_mode 'wrap'; expected one of ('zeros', 'border', 'reflection').
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

TRANSFORMS = ("affine", "attention", "projective", "tps")
PADDING_MODES = ("zeros", "border", "reflection")
DATA_PARALLEL = ("auto", "on", "off")


def check_one_of(name: str, value: Any, allowed: Sequence[Any]) -> Any:
  """Returns ``value`` if it is one of ``allowed``.

  Args:
    name: the option's name, as the caller spells it (``"transform"``).
    value: what was passed.
    allowed: the accepted values.

  Raises:
    ValueError: ``unknown {name} {value!r}; expected one of {allowed}.``

  >>> check_one_of("model", "cnn", ("cnn", "fcn"))
  'cnn'
  """
  if value not in allowed:
    raise ValueError(f"unknown {name} {value!r}; expected one of {tuple(allowed)}.")
  return value


def check_transform(transform: str) -> str:
  """``transform`` if it is one of :data:`TRANSFORMS`, else a ``ValueError`` listing them.

  >>> check_transform("tps")
  'tps'
  """
  return check_one_of("transform", transform, TRANSFORMS)


def check_padding_mode(padding_mode: str) -> str:
  """``padding_mode`` if it is one of :data:`PADDING_MODES`, else a ``ValueError``.

  >>> check_padding_mode("border")
  'border'
  """
  return check_one_of("padding_mode", padding_mode, PADDING_MODES)


def check_control_points_rule(transform: str, control_points: Any) -> None:
  """Control points belong to the thin plate spline only.

  Raises:
    ValueError: ``control_points`` is given and ``transform`` is not ``"tps"``.

  >>> check_control_points_rule("affine", [[0.0, 0.0]])
  Traceback (most recent call last):
    ...
  ValueError: control_points only applies to transform='tps'; got 'affine'.
  """
  if control_points is not None and transform != "tps":
    raise ValueError(f"control_points only applies to transform='tps'; got {transform!r}.")


def check_align_corners(align_corners: Any) -> bool:
  """``align_corners`` as a Python bool; anything but a (NumPy) bool is a ``TypeError``.

  >>> check_align_corners(np.bool_(True))
  True
  """
  return check_flag(align_corners, "align_corners")


def check_flag(value: Any, name: str) -> bool:
  """A boolean option (``align_corners``, ``antialias``) as a Python bool, else ``TypeError``.

  >>> check_flag(np.bool_(False), "antialias")
  False
  """
  if not isinstance(value, bool | np.bool_):
    raise TypeError(f"{name} must be a bool; got {type(value).__name__}.")
  return bool(value)


def _positive_pair(value: Any) -> tuple[int, int] | None:
  try:
    a, b = (int(s) for s in value)
    if a > 0 and b > 0 and all(int(s) == s for s in value):
      return a, b
  except (TypeError, ValueError):
    pass
  return None


def check_output_shape(output_shape: Sequence[int] | None) -> tuple[int, int] | None:
  """A module's ``output_shape``: ``None`` or a pair of positive ints, as a tuple.

  >>> check_output_shape([28, 28.0])
  (28, 28)
  >>> check_output_shape((0, 4))
  Traceback (most recent call last):
    ...
  ValueError: output_shape must be None or a pair of positive ints (Ho, Wo); got (0, 4).
  """
  if output_shape is None:
    return None
  pair = _positive_pair(output_shape)
  if pair is None:
    raise ValueError(
      f"output_shape must be None or a pair of positive ints (Ho, Wo); got {output_shape!r}."
    )
  return pair


def check_pool_size(pool_size: Sequence[int]) -> tuple[int, int]:
  """The localisation net's adaptive pooling grid: a pair of positive ints.

  >>> check_pool_size((4, 4))
  (4, 4)
  """
  pair = _positive_pair(pool_size)
  if pair is None:
    raise ValueError(f"pool_size must be a pair of positive ints; got {pool_size!r}.")
  return pair


def check_data_parallel(data_parallel: str) -> str:
  """The training job's data-parallel switch: one of :data:`DATA_PARALLEL`.

  >>> check_data_parallel("sometimes")
  Traceback (most recent call last):
    ...
  ValueError: data_parallel must be one of ('auto', 'on', 'off'); got 'sometimes'.
  """
  if data_parallel not in DATA_PARALLEL:
    raise ValueError(f"data_parallel must be one of {DATA_PARALLEL}; got {data_parallel!r}.")
  return data_parallel


def check_batch_divides(batch_size: int, devices: int, *, switch_off: str) -> None:
  """A data-parallel batch must split evenly over the devices.

  Args:
    batch_size: examples per step.
    devices: devices along the batch axis.
    switch_off: how the caller turns data parallelism off, for the message
      (``"data_parallel='off'"`` in Python, ``"--data-parallel off"`` on the command line).

  >>> check_batch_divides(10, 4, switch_off="--data-parallel off")
  Traceback (most recent call last):
    ...
  ValueError: batch size must be divisible by the 4 devices for data-parallel training (or pass --data-parallel off); got 10.
  """  # noqa: E501
  if batch_size % devices:
    raise ValueError(
      f"batch size must be divisible by the {devices} devices for data-parallel training "
      f"(or pass {switch_off}); got {batch_size}."
    )
