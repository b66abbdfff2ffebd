"""Import a reference training run: a ``g_`` + ``do_`` checkpoint pair into our train state.

The reference (AcademiCodec ``train.py``) saves ``g_XXXXXXXX`` = ``{"generator", "encoder",
"quantizer"}`` and ``do_XXXXXXXX`` = ``{"mpd", "msd", "mstftd", "optim_g", "optim_d", "steps",
"epoch"}`` (torch state dicts; spec section 7). Read with the torch-free
:func:`~hificodec_jax.reference.pth.load_pth`, they convert here into the parameters of
``Discriminators`` (``mpd`` / ``msd`` / ``mstftd``), MSD's spectral-norm vectors, and optax Adam
states whose moments and count are torch Adam's ``exp_avg`` / ``exp_avg_sq`` / ``step``.

Layouts: a torch conv weight ``(C_out, C_in, *spatial)`` is ``[*spatial, C_in, C_out]`` here
(MPD's ``(k, 1)`` 2-D kernels are our 1-D ``[k, C_in, C_out]``); Encodec's ``NormConv2d`` keys
carry ``.conv.`` (dropped); spectral norm's ``weight_orig`` is our ``kernel`` and its
``weight_u`` / ``weight_v`` (power-iteration vectors, not weight-norm directions) go to the
``spectral`` collection; MS-STFT's ``spec_transform.window`` buffer is checked (periodic Hann)
and dropped. The optimizers' parameter order is the reference's: ``optim_g`` over generator,
encoder, quantizer parameters, ``optim_d`` over MSD, MPD, MS-STFT, each in state-dict order.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hificodec_jax.models.codec import Codec
from hificodec_jax.models.discriminators import REGISTRY, Discriminators
from hificodec_jax.reference import layout
from hificodec_jax.reference.convert import CheckpointMismatchError, torch_to_flax

__all__ = [
    "D_SECTIONS",
    "ReferenceTraining",
    "SingleGpuCheckpointError",
    "adam_state_from_torch",
    "discriminators_from_torch",
    "discriminators_to_torch",
    "import_reference_training",
    "parameter_keys",
    "variable_shapes",
]

D_SECTIONS = ("mpd", "msd", "mstftd")  # do_ sections = our Discriminators submodule names
D_OPTIM_ORDER = ("msd", "mpd", "mstftd")  # reference: Adam(chain(msd, mpd, mstftd))
G_OPTIM_ORDER = ("generator", "encoder", "quantizer")  # reference: Adam(chain(gen, enc, quant))
_BUFFERS = ("weight_u", "weight_v", "window")  # non-parameters (with spectral norm's weight_v)


class SingleGpuCheckpointError(CheckpointMismatchError):
    """A ``do_`` file from a single-GPU reference run: its ``mstftd`` entry holds MSD's weights."""


@dataclasses.dataclass
class ReferenceTraining:
    """A reference run's state, converted: everything a train state needs to continue it.

    ``g_adam`` / ``d_adam`` are torch Adam's ``(exp_avg, exp_avg_sq, step)`` as trees shaped
    like the params; :meth:`opt_states` puts them into optax states.
    """

    g_params: Any
    d_params: Any
    spectral: Any
    g_adam: tuple[Any, Any, int]
    d_adam: tuple[Any, Any, int]
    step: int  # optimizer steps taken (the reference's ``steps + 1``)
    epoch: int
    fresh_stft: bool  # MS-STFT weights (and Adam moments) were not in the file: fresh ones

    def opt_states(self, g_template, d_template) -> tuple[Any, Any]:
        """``(g_opt_state, d_opt_state)``: the templates (``tx.init(params)``) with Adam's
        moments and counts replaced by the reference's."""
        return (
            adam_state_from_torch(g_template, *self.g_adam),
            adam_state_from_torch(d_template, *self.d_adam),
        )


def _is_spectral(sd: dict, key: str) -> bool:
    base, _, leaf = key.rpartition(".")
    return leaf in ("weight_u", "weight_v") and f"{base}.weight_orig" in sd


def _is_buffer(sd: dict, key: str) -> bool:
    return key.endswith(".spec_transform.window") or _is_spectral(sd, key)


def _flax_path(section: str, key: str, spectral: bool) -> tuple[str, tuple[str, ...]]:
    """``(collection, path)`` of torch key ``key`` of ``do_[section]``."""
    *parts, leaf = [p for p in key.split(".") if p != "conv"]  # NormConv2d's inner ``conv``
    path = layout.flax_modules(parts, (section,))
    if spectral:
        return "spectral", (*path, "u" if leaf == "weight_u" else "v")
    return "params", (*path, {"weight": "kernel", "weight_orig": "kernel"}.get(leaf, leaf))


def _torch_key(section: str, path: tuple[str, ...], collection: str) -> str:
    *mods, leaf = path[1:]
    parts = layout.torch_modules(mods)
    if section == "mstftd" and parts and parts[-1].split(".")[0] in ("convs", "conv_post"):
        parts.append("conv")
    if collection == "spectral":
        return ".".join([*parts, f"weight_{leaf}"])
    return ".".join([*parts, "weight" if leaf == "kernel" else leaf])


def _to_flax(x: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """torch ``(C_out, C_in, *spatial)`` (or a vector) -> our ``[*spatial, C_in, C_out]``."""
    x = np.asarray(x, np.float32)
    if x.ndim == len(shape) + 1 and x.shape[-1] == 1:  # MPD's (k, 1) kernels
        x = x[..., 0]
    x = layout.to_flax(x)
    if x.shape != tuple(shape):
        raise CheckpointMismatchError(
            f"{name}: checkpoint shape {layout.torch_shape(x.shape)} does not fit the model's "
            f"{layout.torch_shape(tuple(shape))} (torch layout)"
        )
    return x


def _to_torch(x: np.ndarray, section: str) -> np.ndarray:
    x = layout.to_torch(x)
    return x[..., None] if section == "mpd" and x.ndim == 3 else x


def _flat(tree, prefix=()) -> dict[tuple[str, ...], Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def _nest(flat: dict) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return tree


def variable_shapes(discs: Discriminators) -> dict[str, dict]:
    """``{collection: {path: shape}}`` of ``discs``' variables (traced, not computed)."""
    wav = jax.ShapeDtypeStruct((1, max(4096, 2 * max(discs.stft_n_ffts))), jnp.float32)
    shapes = jax.eval_shape(discs.init, jax.random.key(0), wav)
    return {c: {p: tuple(s.shape) for p, s in _flat(t).items()} for c, t in shapes.items()}


def _check_single_gpu(do: dict) -> None:
    sd = do.get("mstftd", {})
    if (
        sd
        and not any(k.endswith("spec_transform.window") for k in sd)
        and any(k.endswith(".weight_orig") for k in sd)
    ):
        raise SingleGpuCheckpointError(
            "this do_ checkpoint comes from a single-GPU reference run: its 'mstftd' entry holds "
            "the MSD's weights (the reference saves msd.state_dict() under 'mstftd' when "
            "num_gpus == 1), so the MS-STFT discriminator's weights are not in the file. Start "
            "MS-STFT fresh with fresh_stft=True (main: --config.resume_reference_fresh_stft=True)."
        )


def discriminators_from_torch(
    sections: dict[str, dict],
    discs: Discriminators,
    *,
    buffers: bool = True,
    templates: dict[str, dict] | None = None,
) -> tuple[dict, dict]:
    """``do_``'s ``{"mpd", "msd", "mstftd"}`` state dicts -> ``(params, spectral)`` for ``discs``.

    Every family of ``discs`` must be present (its ``module_name``); keys and shapes are checked
    (:class:`CheckpointMismatchError` names the first bad key). ``buffers=False`` converts
    parameter-shaped trees that lack the buffers (e.g. Adam moments): ``spectral`` is then empty.
    ``templates``: :func:`variable_shapes` of ``discs``, if already at hand.
    """
    templates = templates or variable_shapes(discs)
    out: dict[str, dict] = {"params": {}, "spectral": {}}
    for name in discs.families:
        section = REGISTRY[name].module_name
        if section not in sections:
            raise CheckpointMismatchError(f"checkpoint has no {section!r} state dict")
        sd = sections[section]
        for key, value in sd.items():
            if key.endswith(".spec_transform.window"):
                _check_window(f"{section}.{key}", value)
                continue
            spectral = _is_spectral(sd, key)
            collection, path = _flax_path(section, key, spectral)
            shape = templates.get(collection, {}).get(path)
            if shape is None:
                raise CheckpointMismatchError(f"{section}.{key}: not in the config's model")
            out[collection][path] = _to_flax(value, shape, f"{section}.{key}")
        wanted = [c for c in ("params", "spectral") if buffers or c == "params"]
        for collection in wanted:
            for path in templates.get(collection, {}):
                if path[0] == section and path not in out[collection]:
                    key = _torch_key(section, path, collection)
                    raise CheckpointMismatchError(f"{section}.{key}: missing from the checkpoint")
    return _nest(out["params"]), _nest(out["spectral"])


def _check_window(name: str, value) -> None:
    n = len(value)
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    if not np.allclose(np.asarray(value, np.float64), hann, atol=1e-6):
        raise CheckpointMismatchError(f"{name}: not the periodic Hann window our STFT uses")


def discriminators_to_torch(params: dict, spectral: dict | None = None) -> dict[str, dict]:
    """Inverse of :func:`discriminators_from_torch`: ``{section: {torch key: array}}`` (numpy).

    Keys are in our tree's order, not the reference's; no ``spec_transform.window`` buffers.
    """
    out: dict[str, dict] = {}
    for collection, tree in (("params", params), ("spectral", spectral or {})):
        for path, value in _flat(tree).items():
            key = _torch_key(path[0], path, collection)
            if collection == "params" and path[0] == "msd" and path[-1] == "kernel":
                key = key[: -len(".weight")] + ".weight_orig"  # MSD's only plain kernels
            out.setdefault(path[0], {})[key] = _to_torch(value, path[0])
    return out


def parameter_keys(sd: dict) -> list[str]:
    """The parameters' keys of a reference state dict, in order (buffers left out)."""
    return [k for k in sd if not _is_buffer(sd, k)]


def _torch_moments(optim: dict, keys: list[tuple[str, str]], name: str, allow_more: bool):
    """``{section: {key: exp_avg}}``, the same for ``exp_avg_sq``, and the step count."""
    groups = optim.get("param_groups")
    state = optim.get("state")
    if groups is None or state is None:
        raise CheckpointMismatchError(f"{name}: not a torch optimizer state dict")
    ids = [i for g in groups for i in g["params"]]
    if len(ids) < len(keys) or (len(ids) > len(keys) and not allow_more):
        raise CheckpointMismatchError(
            f"{name}: {len(ids)} parameters, the checkpoint's modules have {len(keys)}"
        )
    mu: dict[str, dict] = {}
    nu: dict[str, dict] = {}
    steps = set()
    for i, (section, key) in zip(ids, keys, strict=False):
        s = state.get(i)
        if s is None:  # never updated: torch keeps no state, i.e. zero moments
            continue
        mu.setdefault(section, {})[key] = s["exp_avg"]
        nu.setdefault(section, {})[key] = s["exp_avg_sq"]
        steps.add(int(np.asarray(s["step"]).item()))
    if len(steps) > 1:
        raise CheckpointMismatchError(f"{name}: parameters at different step counts {steps}")
    return mu, nu, steps.pop() if steps else 0


def _fill_missing(moments: dict, reference: dict) -> dict:
    """Zero moments for every parameter of ``reference`` (a state-dict tree) not in ``moments``."""
    out = {}
    for section, sd in reference.items():
        got = moments.get(section, {})
        out[section] = {
            k: got[k] if k in got else np.zeros(np.shape(v), np.float32)
            for k, v in sd.items()
            if not _is_buffer(sd, k)
        }
    return out


def adam_state_from_torch(template, mu, nu, count: int):
    """``template`` (``tx.init(params)``) with every Adam state's moments and count replaced.

    ``mu`` / ``nu`` are trees shaped like the params; schedule counts become ``count`` too.
    """

    def fill(node):
        if isinstance(node, optax.ScaleByAdamState):
            as_like = lambda new, old: jax.tree.map(  # noqa: E731
                lambda n, o: np.asarray(n, o.dtype), new, old
            )
            return node._replace(
                count=np.asarray(count, node.count.dtype),
                mu=as_like(mu, node.mu),
                nu=as_like(nu, node.nu),
            )
        if isinstance(node, optax.ScaleByScheduleState):
            return node._replace(count=np.asarray(count, node.count.dtype))
        if isinstance(node, tuple) and not hasattr(node, "_fields"):
            return tuple(fill(n) for n in node)
        return node

    return fill(template)


def import_reference_training(
    g_ckpt: dict,
    do_ckpt: dict,
    codec: Codec,
    discs: Discriminators,
    *,
    fresh_stft: bool = False,
    rng: jax.Array | None = None,
) -> ReferenceTraining:
    """A reference ``g_`` + ``do_`` pair (as :func:`load_pth` returns them) -> our state parts.

    ``codec`` must have weight norm and ``quantizer.update == "loss"`` (the reference's
    gradient-trained codebooks, which Adam's moments belong to). A single-GPU ``do_`` file
    raises :class:`SingleGpuCheckpointError` unless ``fresh_stft``: MS-STFT then gets a fresh
    initialisation from ``rng`` and zero Adam moments.
    """
    if codec.quantizer.update != "loss":
        raise ValueError(
            "a reference run trains its codebooks by the loss: use the academicodec recipe "
            "(quantizer.update='loss') to continue it"
        )
    missing = [k for k in (*D_SECTIONS, "optim_g", "optim_d", "steps") if k not in do_ckpt]
    if missing:
        raise CheckpointMismatchError(f"do_ checkpoint lacks {missing}")
    g_state = {k: g_ckpt[k] for k in G_OPTIM_ORDER if k in g_ckpt}
    g_params = torch_to_flax(g_state, codec)["params"]

    single_gpu = False
    try:
        _check_single_gpu(do_ckpt)
    except SingleGpuCheckpointError:
        if not fresh_stft:
            raise
        single_gpu = True
    sections = {k: do_ckpt[k] for k in D_SECTIONS}
    fresh = None
    if single_gpu and "stft" in discs.families:
        stft = REGISTRY["stft"].from_options(discs)
        wav = jnp.zeros((1, 2 * max(discs.stft_n_ffts)), jnp.float32)
        key = rng if rng is not None else jax.random.key(0)
        fresh = jax.tree.map(np.asarray, stft.init(key, wav)["params"])
        sections["mstftd"] = discriminators_to_torch({"mstftd": fresh})["mstftd"]
    shapes = variable_shapes(discs)  # traced once for the weights and both moments
    d_params, spectral = discriminators_from_torch(sections, discs, templates=shapes)

    # torch Adam: parameters in the reference's chain order, each module in state-dict order.
    d_keys = [(s, k) for s in D_OPTIM_ORDER for k in parameter_keys(sections[s])]
    d_mu, d_nu, d_count = _torch_moments(do_ckpt["optim_d"], d_keys, "optim_d", single_gpu)
    if single_gpu:  # the file's MS-STFT moments belong to weights it does not hold
        d_mu.pop("mstftd", None)
        d_nu.pop("mstftd", None)
    d_mu, d_nu = (
        discriminators_from_torch(
            _fill_missing(m, sections), discs, buffers=False, templates=shapes
        )[0]
        for m in (d_mu, d_nu)
    )
    g_keys = [(s, k) for s in G_OPTIM_ORDER for k in g_state.get(s, {})]
    g_mu, g_nu, g_count = _torch_moments(do_ckpt["optim_g"], g_keys, "optim_g", False)
    g_mu, g_nu = (torch_to_flax(_fill_missing(m, g_state), codec)["params"] for m in (g_mu, g_nu))

    step = int(np.asarray(do_ckpt["steps"]).item()) + 1  # the reference resumes at steps + 1
    return ReferenceTraining(
        g_params=g_params,
        d_params=d_params,
        spectral=spectral,
        g_adam=(g_mu, g_nu, g_count),
        d_adam=(d_mu, d_nu, d_count),
        step=step,
        epoch=int(np.asarray(do_ckpt.get("epoch", 0)).item()),
        fresh_stft=single_gpu,
    )
