"""``python -m hificodec_jax.tokens``: the ``tokenize`` command (see :mod:`.command`)."""

import argparse
import sys

from hificodec_jax.tokens import command


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hificodec_jax.tokens", description=command.__doc__.splitlines()[0]
    )
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
