"""Group-Residual Vector Quantization (GRVQ, HiFi-Codec paper Sec. 3; AcademiCodec ``Quantizer``).

Shapes: ``z [B, F, D]`` is split contiguously along channels into ``G`` groups of ``d = D / G``;
each group is quantized by an ``R``-level residual VQ with codebooks of ``K`` codes.
Codebooks are stacked as ``[R, G, K, d]``; codes are ``[B, F, R*G]`` int32 in the reference
order (level-major, then group: r0g0, r0g1, r1g0, r1g1).

Two codebook updates:

* ``"loss"`` (reference): codebooks are ``params`` trained by gradient through the codebook
  loss ``mean((zq - sg(x))^2)``; init ``U(-1/K, 1/K)``.
* ``"ema"`` (our default for new training; a deliberate deviation from the reference, which has
  no EMA): codebooks live in the ``vq`` collection with EMA cluster sizes and sums, Laplace
  smoothing, k-means initialisation on the first training batch and restarts of dead codes
  from batch vectors. Call with ``train=True`` and ``mutable=["vq"]`` (and a ``"vq"`` rng) to
  update them. The statistics are plain sums over the (global) batch, so under ``jax.jit`` over
  a batch-sharded array XLA all-reduces them: no ``psum`` is needed.

The straight-through output and the detach structure follow the reference exactly: level ``r``
emits ``q_r = x_r + sg(zq_r - x_r)`` and passes ``x_{r+1} = x_r - q_r``, which carries no
gradient, so only level 0's commitment term reaches the encoder.
"""

from __future__ import annotations

import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sg = jax.lax.stop_gradient


@flax.struct.dataclass
class QuantizerOutput:
    """What one GRVQ pass returns (``L`` = levels used, ``<= R``)."""

    z_q: jax.Array  # [B, F, D] straight-through quantized latent
    codes: jax.Array  # [B, F, L*G] int32
    loss: jax.Array  # [] weighted quantizer loss (mean over levels, as the reference)
    commitment: jax.Array  # [L, G] mean((sg(zq) - x)^2) over valid frames
    codebook_loss: jax.Array  # [L, G] mean((zq - sg(x))^2) over valid frames
    counts: jax.Array  # [L*G, K] code usage over valid frames
    perplexity: jax.Array  # [L*G] exp(entropy of the usage distribution)
    dead_codes: jax.Array  # [L*G] codes unused in this batch


def squared_distances(x: jax.Array, codebook: jax.Array) -> jax.Array:
    """``||x||^2 + ||e||^2 - 2 x.e`` for ``x [N, G, d]``, ``codebook [G, K, d]`` -> ``[N, G, K]``."""
    xx = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    ee = jnp.sum(jnp.square(codebook), axis=-1)
    xe = jnp.einsum("ngd,gkd->ngk", x, codebook, precision=jax.lax.Precision.HIGHEST)
    return xx + ee[None] - 2.0 * xe


def lookup(codebook: jax.Array, idx: jax.Array) -> jax.Array:
    """Rows of each group's codebook: ``codebook [G, K, d]``, ``idx [..., G]`` -> ``[..., G, d]``."""
    return jax.vmap(lambda cb, i: jnp.take(cb, i, axis=0), in_axes=(0, -1), out_axes=-2)(
        codebook, idx
    )


def codebook_perplexity(counts: jax.Array) -> jax.Array:
    """``counts [..., K]`` (code histogram) -> ``exp(entropy)`` of the usage distribution ``[...]``.

    Works on numpy and jax arrays alike (``xp`` follows the input); an empty histogram gives 1.
    """
    xp = np if isinstance(counts, np.ndarray) else jnp
    p = counts / xp.maximum(xp.sum(counts, axis=-1, keepdims=True), 1.0)
    entropy = -xp.sum(xp.where(p > 0, p * xp.log(xp.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return xp.exp(entropy)


def stream_names(num_streams: int, num_groups: int) -> list[str]:
    """``r{level}g{group}`` for each code stream, level-major (the quantizer's code order): the
    suffixes of the ``vq/perplexity_*`` training tags and the ``eval/perplexity_*`` tags."""
    return [f"r{i // num_groups}g{i % num_groups}" for i in range(num_streams)]


def ema_state_from_codebooks(codebooks: np.ndarray) -> dict:
    """An initialised EMA ``vq`` state for trained ``codebooks [R, G, K, d]``: unit cluster
    sizes and sums equal to the codebooks, so no k-means runs and every code starts at the
    dead-code threshold's default of 1."""
    codebooks = np.asarray(codebooks, np.float32)
    return {
        "codebooks": codebooks,
        "cluster_size": np.ones(codebooks.shape[:-1], np.float32),
        "embed_sum": codebooks.copy(),
        "initialized": np.ones((), bool),
    }


def usage_stats(codes: jax.Array, weight: jax.Array, k: int):
    """``codes [N, C]`` with ``weight [N]`` -> counts ``[C, K]``, perplexity ``[C]``, dead ``[C]``."""
    onehot = jax.nn.one_hot(codes, k, dtype=jnp.float32) * weight[:, None, None]
    counts = jnp.sum(onehot, axis=0)
    dead = jnp.sum(counts == 0, axis=-1).astype(jnp.int32)
    return counts, codebook_perplexity(counts), dead


def kmeans(x: jax.Array, weight: jax.Array, rng: jax.Array, k: int, iters: int):
    """Weighted Lloyd k-means of ``x [N, d]``: -> centroids ``[K, d]``, cluster sizes ``[K]``.

    Centroids start at ``K`` vectors drawn (with replacement) from the rows with weight > 0; a
    cluster that loses all its members keeps its previous centroid.
    """
    logits = jnp.where(weight > 0, 0.0, -jnp.inf)
    logits = jnp.where(jnp.any(weight > 0), logits, 0.0)  # all-padding batch: draw from anything
    centroids = x[jax.random.categorical(rng, logits, shape=(k,))]

    def step(_, carry):
        c, _ = carry
        d = squared_distances(x[:, None], c[None])[:, 0]  # [N, K]
        onehot = jax.nn.one_hot(jnp.argmin(d, axis=-1), k) * weight[:, None]
        counts = jnp.sum(onehot, axis=0)
        sums = onehot.T @ x
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1e-12)[:, None], c), counts

    return jax.lax.fori_loop(0, iters + 1, step, (centroids, jnp.zeros((k,), x.dtype)))


def ema_update(cluster_size, embed_sum, counts, sums, decay: float, eps: float):
    """One EMA step with Laplace smoothing, per codebook (leading axes broadcast).

    ``cluster_size [..., K]``, ``embed_sum [..., K, d]`` -> new (cluster_size, embed_sum, codebook)
    with ``codebook = embed_sum / ((N_k + eps) / (n + K*eps) * n)``, ``n = sum_k N_k``.
    """
    cluster_size = decay * cluster_size + (1.0 - decay) * counts
    embed_sum = decay * embed_sum + (1.0 - decay) * sums
    n = jnp.sum(cluster_size, axis=-1, keepdims=True)
    k = cluster_size.shape[-1]
    smoothed = (cluster_size + eps) / (n + k * eps) * n
    return cluster_size, embed_sum, embed_sum / smoothed[..., None]


class GroupResidualVQ(nn.Module):
    """GRVQ: ``z [B, F, D]`` (+ optional ``mask [B, F]``) -> :class:`QuantizerOutput`."""

    num_groups: int = 2  # G; reference n_code_groups
    num_levels: int = 2  # R; hard-coded 2 in the reference
    codebook_size: int = 1024  # K; reference n_codes
    dim: int = 512  # D
    update: str = "ema"  # "ema" | "loss"
    commitment_weight: float = 0.25  # reference commitment_loss_lambda
    codebook_weight: float = 1.0  # reference codebook_loss_lambda ("loss" mode only)
    ema_decay: float = 0.99
    ema_epsilon: float = 1e-5
    kmeans_iters: int = 10
    dead_code_threshold: float = 1.0  # EMA cluster size below which a code is restarted; 0: off

    def setup(self):
        if self.update not in ("ema", "loss"):
            raise ValueError(f"update must be 'ema' or 'loss', got {self.update!r}")
        if self.dim % self.num_groups:
            raise ValueError(f"latent dim {self.dim} is not divisible by {self.num_groups} groups")
        r, g, k, d = (
            self.num_levels,
            self.num_groups,
            self.codebook_size,
            self.dim // self.num_groups,
        )
        init = nn.initializers.uniform(2.0 / k)  # then shifted to U(-1/K, 1/K) as the reference

        def codebook_init(rng, shape=(r, g, k, d)):
            return init(rng, shape) - 1.0 / k

        if self.update == "loss":
            self.codebooks = self.param("codebooks", codebook_init)
        else:
            self._codebooks = self.variable(
                "vq", "codebooks", lambda: codebook_init(self.make_rng("params"))
            )
            self.cluster_size = self.variable("vq", "cluster_size", jnp.zeros, (r, g, k))
            self.embed_sum = self.variable("vq", "embed_sum", jnp.zeros, (r, g, k, d))
            self.initialized = self.variable("vq", "initialized", lambda: jnp.zeros((), bool))

    def get_codebooks(self) -> jax.Array:
        """All codebooks ``[R, G, K, d]`` (params in "loss" mode, the ``vq`` collection in EMA)."""
        return jnp.asarray(self.codebooks if self.update == "loss" else self._codebooks.value)

    def check_levels(self, num_levels: int | None) -> int:
        """The levels used for ``num_levels`` (None: all ``R``); ValueError outside ``[1, R]``."""
        levels = self.num_levels if num_levels is None else int(num_levels)
        if not 1 <= levels <= self.num_levels:
            raise ValueError(f"num_levels must be in [1, {self.num_levels}], got {num_levels}")
        return levels

    def levels_of_streams(self, num_streams: int) -> int:
        """The levels ``L`` of codes with ``num_streams = L*G`` streams; ValueError otherwise."""
        g, r = self.num_groups, self.num_levels
        if num_streams % g or not 1 <= num_streams // g <= r:
            raise ValueError(
                f"codes have {num_streams} streams on the last axis; expected levels x groups = "
                f"L*{g} with 1 <= L <= {r} ({r * g} at full rate)"
            )
        return num_streams // g

    def bits_per_frame(self, num_levels: int | None = None) -> float:
        """Bits carried by one frame of codes at ``num_levels`` levels: ``L * G * log2(K)``."""
        return self.check_levels(num_levels) * self.num_groups * math.log2(self.codebook_size)

    def __call__(
        self,
        z: jax.Array,
        mask: jax.Array | None = None,
        *,
        train: bool = False,
        num_levels: int | None = None,
    ) -> QuantizerOutput:
        b, f, dim = z.shape
        if dim != self.dim:
            raise ValueError(f"latent has {dim} channels, the quantizer expects {self.dim}")
        levels = self.check_levels(num_levels)
        g, k = self.num_groups, self.codebook_size
        weight = jnp.ones((b * f,), z.dtype) if mask is None else mask.reshape(-1).astype(z.dtype)
        n_valid = jnp.maximum(jnp.sum(weight), 1.0)
        update = train and self.update == "ema" and self.is_mutable_collection("vq")
        codebooks = self.get_codebooks()
        if update:
            rng = self._vq_rng()
            sizes, sums = jnp.asarray(self.cluster_size.value), jnp.asarray(self.embed_sum.value)

        def group_mean(sq):  # [B*F, G, d] -> [G], mean over valid frames and channels
            return jnp.sum(jnp.mean(sq, axis=-1) * weight[:, None], axis=0) / n_valid

        residual, out = z, jnp.zeros_like(z)
        all_codes, commit, cb_loss, stats_in = [], [], [], []
        for r in range(levels):
            if update:  # first batch: k-means of level r's codebooks on level r's residual
                cb_r, size_r, sum_r = self._init_level(
                    codebooks[r], sizes[r], sums[r], residual, weight, rng, r
                )
                codebooks, sizes, sums = (
                    codebooks.at[r].set(cb_r),
                    sizes.at[r].set(size_r),
                    sums.at[r].set(sum_r),
                )
            x = residual.reshape(b * f, g, dim // g)  # [N, G, d]
            idx = jnp.argmin(squared_distances(x, codebooks[r]), axis=-1)  # [N, G]
            zq = lookup(codebooks[r], idx)  # [N, G, d]
            cb_loss.append(group_mean(jnp.square(zq - sg(x))))
            commit.append(group_mean(jnp.square(sg(zq) - x)))
            stats_in.append((sg(x), idx))
            xr = residual
            q = xr + sg(zq.reshape(b, f, dim) - xr)  # straight-through
            residual = residual - q  # value x - zq, no gradient (reference detach structure)
            out = out + q
            all_codes.append(idx.astype(jnp.int32))
        codes = jnp.concatenate(all_codes, axis=-1)  # [N, L*G], level-major
        commit, cb_loss = jnp.stack(commit), jnp.stack(cb_loss)  # [L, G]
        if self.update == "loss":
            per_level = self.codebook_weight * cb_loss + self.commitment_weight * commit
        else:
            per_level = self.commitment_weight * commit
        loss = jnp.mean(jnp.mean(per_level, axis=-1))  # both groups together, then mean of levels
        counts, perplexity, dead = usage_stats(codes, weight, k)
        if update:
            self._ema_step(codebooks, sizes, sums, stats_in, weight, rng)
        return QuantizerOutput(
            z_q=out,
            codes=codes.reshape(b, f, levels * g),
            loss=loss,
            commitment=commit,
            codebook_loss=cb_loss,
            counts=counts,
            perplexity=perplexity,
            dead_codes=dead,
        )

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        """``codes [B, F, L*G]`` (``L <= R`` levels) -> ``z_q [B, F, D]`` (reference ``embed``)."""
        b, f, c = codes.shape
        g = self.num_groups
        levels = self.levels_of_streams(c)
        codebooks = self.get_codebooks()
        z_q = jnp.zeros((b, f, self.dim), codebooks.dtype)
        for r in range(levels):
            z_q = z_q + lookup(codebooks[r], codes[..., r * g : (r + 1) * g]).reshape(b, f, -1)
        return z_q

    # -- EMA machinery ----------------------------------------------------------------------

    def _vq_rng(self) -> jax.Array:
        if not self.has_rng("vq"):
            raise ValueError(
                "EMA codebook updates need a 'vq' rng for k-means init and dead-code restarts: "
                "apply(..., train=True, mutable=['vq'], rngs={'vq': key})"
            )
        return self.make_rng("vq")

    def _init_level(self, codebook, size, sums, residual, weight, rng, r: int):
        """On the first training batch, k-means level ``r``'s group codebooks ``[G, K, d]``.

        Returns (codebook, cluster_size, embed_sum) for the level: the k-means centroids with
        their cluster sizes as EMA state, or the current state once initialised.
        """
        g, k = self.num_groups, self.codebook_size
        x = sg(residual).reshape(-1, g, self.dim // g)
        keys = jax.random.split(jax.random.fold_in(rng, 1000 + r), g)

        def init(_):
            c, counts = jax.vmap(kmeans, in_axes=(1, None, 0, None, None))(
                x, weight, keys, k, self.kmeans_iters
            )
            return c, counts, c * counts[..., None]

        return jax.lax.cond(self.initialized.value, lambda _: (codebook, size, sums), init, None)

    def _ema_step(self, codebooks, sizes, sums, stats_in, weight, rng):
        """EMA of global-batch counts/sums, then dead-code restarts; writes the ``vq`` collection."""
        k = self.codebook_size
        for r, (x, idx) in enumerate(stats_in):
            onehot = jax.nn.one_hot(idx, k, dtype=x.dtype) * weight[:, None, None]  # [N, G, K]
            counts = jnp.sum(onehot, axis=0)  # [G, K]
            batch_sums = jnp.einsum("ngk,ngd->gkd", onehot, x)  # [G, K, d]
            size_r, sum_r, cb_r = ema_update(
                sizes[r], sums[r], counts, batch_sums, self.ema_decay, self.ema_epsilon
            )
            if self.dead_code_threshold > 0:
                cb_r, size_r, sum_r = self._restart_dead(
                    cb_r, size_r, sum_r, x, weight, jax.random.fold_in(rng, r)
                )
            codebooks = codebooks.at[r].set(cb_r)
            sizes = sizes.at[r].set(size_r)
            sums = sums.at[r].set(sum_r)
        self._codebooks.value = codebooks
        self.cluster_size.value = sizes
        self.embed_sum.value = sums
        self.initialized.value = jnp.ones((), bool)

    def _restart_dead(self, codebook, size, sums, x, weight, rng):
        """Replace codes whose EMA cluster size fell below the threshold by random batch vectors.

        ``codebook [G, K, d]``, ``size [G, K]``; a restarted code gets cluster size = threshold
        and ``embed_sum = threshold * vector``, so it stays at that vector until it is used or
        is restarted again (each step it is still below the threshold).
        """
        g, k = self.num_groups, self.codebook_size
        logits = jnp.where(weight > 0, 0.0, -jnp.inf)
        draw = jax.random.categorical(rng, logits, shape=(g, k))  # [G, K] row indices
        samples = jax.vmap(lambda xg, i: xg[i], in_axes=(1, 0))(x, draw)  # [G, K, d]
        dead = size < self.dead_code_threshold
        thr = jnp.asarray(self.dead_code_threshold, size.dtype)
        return (
            jnp.where(dead[..., None], samples, codebook),
            jnp.where(dead, thr, size),
            jnp.where(dead[..., None], thr * samples, sums),
        )
