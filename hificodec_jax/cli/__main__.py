"""``python -m hificodec_jax.cli``: the ``hificodec-jax`` command."""

import sys

from hificodec_jax.cli import main

sys.exit(main())
