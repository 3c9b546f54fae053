"""The distorted-digits experiment: the paper's CNN vs ST-CNN comparison, built on stn_jax.

An application of the library, not part of it: it sits above the core and the Flax
modules and nothing below imports it. Its modules:

* :mod:`stn_jax.digits.datasets`: scikit-learn's bundled digits (or local MNIST files),
  distorted with stn_jax itself (R, RTS, P, E, TC).
* :mod:`stn_jax.digits.models`: the classifiers (CNN, FCN, and both behind a transformer).
* :mod:`stn_jax.digits.train`: state, step, loop, evaluation and the driver
  :func:`~stn_jax.digits.train.train_and_evaluate`, Flax ``examples/mnist`` style.
* :mod:`stn_jax.digits.checkpoints`: orbax checkpoints that record who wrote them.
* :mod:`stn_jax.digits.cli`: the ``stn-jax`` command (also ``python -m stn_jax``).

Needs the ``demo`` extra: ``pip install "stn_jax[demo]"``.
"""
