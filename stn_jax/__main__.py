"""``python -m stn_jax``: the ``stn-jax`` command line."""

from stn_jax.cli import main

raise SystemExit(main())
