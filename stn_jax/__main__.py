"""``python -m stn_jax``: the ``stn-jax`` command line."""

from stn_jax.digits.cli import main

# Guarded so that importing the module (pytest --doctest-modules does) runs nothing.
if __name__ == "__main__":
  raise SystemExit(main())
