"""``python -m hificodec_jax.tokens``: an alias of ``hificodec-jax tokenize``."""

if __name__ == "__main__":
    import sys

    from hificodec_jax.cli import main

    sys.exit(main(["tokenize", *sys.argv[1:]]))
