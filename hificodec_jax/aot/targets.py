"""The chips a program can be compiled for on any host: TPU slices, NVIDIA GPUs and the CPU.

Each :class:`Target` names its compile-only devices (a libtpu topology or a GPU target config
shipped in ``gpu_targets/``) and the chip's published figures the reports compare against:
HBM per chip, dense bf16 peak, HBM bandwidth, and for TPUs the clock that turns the compiler's
cycle estimates into seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from importlib import resources

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Target:
    """One compile target: ``chips`` devices of one kind."""

    name: str
    platform: str  # "tpu", "cuda" or "cpu"
    chips: int
    hbm_bytes: int  # per chip
    bf16_flops: float  # dense peak per chip, FLOP/s
    hbm_bandwidth: float  # bytes/s per chip
    topology: str = ""  # libtpu topology name ("v5e:2x4") or GPU "partitions x hosts x devices"
    topology_options: tuple = ()  # extra keyword arguments of get_topology_desc
    gpu_config: str = ""  # file in gpu_targets/
    clock_hz: float = 0.0  # TPU core clock for the cycle model; 0 where none
    clock_note: str = ""
    # Share of HBM a job may plan for: launch/gpu.sh lets JAX take 90 % of a GPU's memory
    # (XLA_PYTHON_CLIENT_MEM_FRACTION) and keeps the rest for cuDNN workspaces.
    usable_fraction: float = 1.0

    @property
    def usable_bytes(self) -> int:
        return int(self.hbm_bytes * self.usable_fraction)


def _tpu(name, topology, chips, hbm_gib, peak_tf, bw_gbs, clock_ghz, clock_note, megacore=False):
    options = (("chip_config_name", "megacore"),) if megacore else ()
    if chips == 1:  # a single chip needs its host bounds spelled out
        options += (("chips_per_host_bounds", (1, 1, 1)),)
    elif chips == 2:
        options += (("chips_per_host_bounds", (2, 1, 1)),)
    return Target(
        name=name,
        platform="tpu",
        chips=chips,
        hbm_bytes=hbm_gib * GiB,
        bf16_flops=peak_tf * 1e12,
        hbm_bandwidth=bw_gbs * 1e9,
        topology=topology,
        topology_options=options,
        clock_hz=clock_ghz * 1e9,
        clock_note=clock_note,
    )


def _gpu(name, config, hbm_bytes, peak_tf, bw_tbs, gpus=1):
    # PJRT GPU topologies are "slices x hosts x devices per host": nodes of 8 GPUs
    topology = f"1x1x{gpus}" if gpus <= 8 else f"1x{gpus // 8}x8"
    return Target(
        name=name,
        platform="cuda",
        chips=gpus,
        hbm_bytes=hbm_bytes,
        bf16_flops=peak_tf * 1e12,
        hbm_bandwidth=bw_tbs * 1e12,
        topology=topology,
        gpu_config=config,
        usable_fraction=0.9,
    )


# Published per-chip figures (Google Cloud TPU and NVIDIA data sheets). TPU clocks: bf16 peak /
# (matrix units x 128 x 128 x 2 FLOP per cycle): v4 2 cores x 4 MXUs, v5e 1 x 4, v5p 2 x 4.
_V4 = dict(hbm_gib=32, peak_tf=275, bw_gbs=1228, clock_ghz=1.05, megacore=True,
           clock_note="1.05 GHz (v4 paper; 275 TFLOP/s / 8 MXUs)")  # fmt: skip
_V5E = dict(hbm_gib=16, peak_tf=197, bw_gbs=819, clock_ghz=1.5,
            clock_note="1.5 GHz (197 TFLOP/s / 4 MXUs of 128x128)")  # fmt: skip
_V5P = dict(hbm_gib=95, peak_tf=459, bw_gbs=2765, clock_ghz=1.75, megacore=True,
            clock_note="1.75 GHz (459 TFLOP/s / 8 MXUs of 128x128)")  # fmt: skip
_V6E = dict(hbm_gib=32, peak_tf=918, bw_gbs=1640, clock_ghz=1.75,
            clock_note="1.75 GHz ASSUMED: Google publishes no v6e clock")  # fmt: skip

# Slice shapes of Cloud TPU offerings by chip count (v4 and v5p are named by cores, 2 per chip).
_SHAPES_2D = {1: "1x1", 2: "2x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8",
              128: "8x16", 256: "16x16"}  # fmt: skip
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
              256: "4x8x8", 512: "8x8x8"}  # fmt: skip
_TPU_KINDS = {"v4": (_V4, 2), "v5p": (_V5P, 2), "v5e": (_V5E, 1), "v5litepod": (_V5E, 1),
              "v6e": (_V6E, 1)}  # fmt: skip
_GPU_KINDS = {
    "h100": ("h100_sxm.txtpb", 80 * GiB, 989, 3.35),
    "h200": ("h200_sxm.txtpb", 141 * 10**9, 989, 4.8),
    "a100-80g": ("a100_sxm_80gb.txtpb", 80 * GiB, 312, 2.039),
}
EXAMPLES = ("v5e-8", "v4-8", "v4-32", "v5p-8", "v6e-8", "h100", "h200", "a100-80g", "h100-8", "cpu")
CPU = "cpu"


def target_names() -> list[str]:
    """Examples of target names: ``<tpu>-<chips or cores>`` as Cloud TPU names its slices
    (v5e / v5litepod / v6e: chips; v4 / v5p: cores), ``<gpu>[-<gpus>]``, ``cpu``."""
    return list(EXAMPLES)


def _parse(name: str) -> Target | None:
    m = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", name)
    if m:
        spec, cores_per_chip = _TPU_KINDS[m.group(1)]
        n = int(m.group(2))
        chips = n // cores_per_chip
        shapes = _SHAPES_3D if cores_per_chip == 2 else _SHAPES_2D
        if n % cores_per_chip or chips not in shapes:
            return None
        gen = "v5e" if m.group(1) == "v5litepod" else m.group(1)
        return _tpu(name, f"{gen}:{shapes[chips]}", chips, **spec)
    m = re.fullmatch(r"(h100|h200|a100-80g)(?:-(\d+))?", name)
    if m:
        config, hbm, peak, bw = _GPU_KINDS[m.group(1)]
        gpus = int(m.group(2) or 1)
        if gpus < 1 or (gpus > 8 and gpus % 8):
            return None
        return _gpu(name, config, hbm, peak, bw, gpus)
    return None


def get_target(name: str) -> Target:
    """The target called ``name`` (``cpu``: this host's CPU devices, its RAM as capacity)."""
    if name == CPU:
        import jax

        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return Target(CPU, "cpu", len(jax.devices("cpu")), ram, 0.0, 0.0)
    target = _parse(name)
    if target is None:
        raise ValueError(f"unknown target {name!r}; e.g. one of {', '.join(target_names())}")
    return target


def gpu_target_config(target: Target) -> str:
    """The target's ``GpuTargetConfigProto`` text (shipped in ``hificodec_jax/aot/gpu_targets``)."""
    return (
        resources.files(__package__).joinpath("gpu_targets").joinpath(target.gpu_config).read_text()
    )


def prepare_environment() -> None:
    """Settings the compile-only devices need, before JAX starts a backend.

    The host's JAX runs on CPU (the accelerator plugins then do not probe for chips or check
    CUDA libraries); libtpu skips the Cloud metadata server, and may be loaded while another
    process holds it (a compile opens no chip).
    """
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    import jax
    from jax._src import xla_bridge

    from hificodec_jax import platforms

    if not xla_bridge.backends_are_initialized() and not jax.config.jax_platforms:
        jax.config.update("jax_platforms", "cpu")
    platforms.restore_plugins()


@functools.cache
def _topology_devices(name: str) -> tuple:
    target = get_target(name)
    import jax
    from jax.experimental import topologies

    if target.platform == "cpu":
        return tuple(jax.devices("cpu"))
    prepare_environment()
    try:
        if target.platform == "tpu":
            topo = topologies.get_topology_desc(
                platform="tpu",
                topology_name=target.topology,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in target.topology_options},
            )
        else:
            topo = topologies.get_topology_desc(
                platform="cuda", target_config=gpu_target_config(target), topology=target.topology
            )
    except (ImportError, RuntimeError, NotImplementedError) as e:
        raise MissingCompilerError(target, e) from e
    if len(topo.devices) != target.chips:
        raise RuntimeError(
            f"{name}: topology {target.topology} has {len(topo.devices)} devices, "
            f"expected {target.chips}"
        )
    return tuple(topo.devices)


def devices(name: str) -> list:
    """The compile-only devices of target ``name`` (real CPU devices for ``cpu``)."""
    return list(_topology_devices(name))


class MissingCompilerError(RuntimeError):
    """The compiler for a target is not installed (``pip install 'hificodec_jax[aot]'``)."""

    def __init__(self, target: Target, cause: Exception):
        package = "libtpu" if target.platform == "tpu" else "jax-cuda12-plugin"
        super().__init__(
            f"cannot compile for {target.name}: {package} is not installed or does not match "
            f"this jax (pip install 'hificodec_jax[aot]'): {cause}"
        )


def compiler_installed(platform: str) -> bool:
    """Whether this environment has the compiler for ``platform`` ("tpu" or "cuda")."""
    import importlib.util

    if platform == "tpu":
        return importlib.util.find_spec("libtpu") is not None
    if platform == "cuda":
        try:
            return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
        except ModuleNotFoundError:
            return False
    return True
