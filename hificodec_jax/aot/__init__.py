"""Ahead-of-time compilation for TPU and GPU chips on any host (``python -m
hificodec_jax.aot.command``): per-chip memory against HBM, the largest batch that fits, the
compiler's estimates and the programs' form. Needs the ``[aot]`` extra for TPU and GPU targets.
"""
