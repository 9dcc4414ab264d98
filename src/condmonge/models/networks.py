r"""Flax networks: the condition embedding :math:`h(c)` and the residual map :math:`T(x, c)`.

.. math::
    T(x, c) = x + f\big([\,(x - \mu)/\sigma,\; h(c)\,]\big)
        \;\big[\, + \textstyle\sum_{j \in c} s(e_j, \text{dose}_j) \big]

(the bracket with ``shift_head``) where :math:`\mu, \sigma` are fixed feature statistics of
the training cells (the ``constants`` collection; never trained) and the last layers of
:math:`f` and :math:`s` start at zero, so an untrained map is the identity.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from condmonge.conditions.encoding import EncodedConditions
from condmonge.config import Config
from condmonge.models.prior import condition_signature, linear_shift, nearest_shift

__all__ = [
    "AdditiveShift",
    "ConditionEmbedding",
    "ConditionalResidualMap",
    "PerturbationSetEncoder",
    "network_from_config",
]


class PerturbationSetEncoder(nn.Module):
    r"""Permutation-invariant encoder of a set of (perturbation, dose) pairs (Deep Sets).

    .. math::
        h_{\text{set}} = \rho\Big(\operatorname{pool}_{j: \text{mask}_j = 1}
            \phi([e_j, \log_{10}(1 + \text{dose}_j)])\Big)

    Padding rows (``mask = 0``) contribute nothing, so the output does not depend on the order
    of the perturbations nor on the padded size ``m``.
    """

    hidden_dim: int
    out_dim: int
    pooling: str = "sum"

    @nn.compact
    def __call__(self, features: jnp.ndarray, log_dose: jnp.ndarray, mask: jnp.ndarray):
        """Encode ``features [m, p]``, ``log_dose [m]``, ``mask [m]`` into ``[out_dim]``."""
        h = jnp.concatenate([features, log_dose[:, None]], axis=-1)
        h = nn.gelu(nn.Dense(self.hidden_dim, name="phi_0")(h))
        h = nn.gelu(nn.Dense(self.hidden_dim, name="phi_1")(h))
        pooled = jnp.sum(h * mask[:, None], axis=0)
        if self.pooling == "mean":
            pooled = pooled / jnp.maximum(jnp.sum(mask), 1.0)
        return nn.Dense(self.out_dim, name="rho")(pooled)


class AdditiveShift(nn.Module):
    r"""A shift that adds up over the perturbations of a set: the additive prior, in cell space.

    .. math::
        s(c) = \sum_{j: \text{mask}_j = 1} W\,\psi([e_j, \log_{10}(1 + \text{dose}_j)])

    A combination's shift is the sum of its members' shifts, as in the additive baseline, so a
    pair whose singles were trained starts from their summed effects; the cell-dependent map
    :math:`f` learns what the sum misses. :math:`W` starts at zero (the untrained map stays the
    identity), and a translation is an optimal map, so the Monge gap does not penalise it.
    """

    hidden_dim: int
    n_features: int

    @nn.compact
    def __call__(self, features: jnp.ndarray, log_dose: jnp.ndarray, mask: jnp.ndarray):
        """Shift ``[n_features]`` of ``features [m, p]``, ``log_dose [m]``, ``mask [m]``."""
        h = jnp.concatenate([features, log_dose[:, None]], axis=-1)
        h = nn.gelu(nn.Dense(self.hidden_dim, name="psi")(h))
        shifts = nn.Dense(self.n_features, kernel_init=nn.initializers.zeros, name="out")(h)
        return jnp.sum(shifts * mask[:, None], axis=0)


class ConditionEmbedding(nn.Module):
    """One branch per modality (perturbation set, context), merged into ``[condition_dim]``."""

    condition_dim: int
    hidden_dim: int
    pooling: str = "sum"

    @nn.compact
    def __call__(self, condition: EncodedConditions) -> jnp.ndarray:
        """Embed one condition (arrays without the leading ``k`` axis)."""
        parts = [
            PerturbationSetEncoder(self.hidden_dim, self.hidden_dim, self.pooling, name="set")(
                condition.perturbation, condition.log_dose, condition.mask
            )
        ]
        if condition.context.shape[-1] > 0:
            parts.append(nn.Dense(self.hidden_dim, name="context")(condition.context))
        h = nn.gelu(jnp.concatenate(parts, axis=-1))
        return nn.Dense(self.condition_dim, name="merge")(h)


class ConditionalResidualMap(nn.Module):
    r"""``T(x, c) = x + f([x_normalised, h(c)])`` for a batch ``x [n, d]`` and one condition.

    ``dtype`` is the computation type of the layers of ``f`` (e.g. ``jnp.bfloat16`` for mixed
    precision); parameters, the residual sum and the output stay float32.

    With ``dose_gate`` the residual is scaled by
    :math:`g(c) = \tanh\big(\operatorname{softplus}(a) \sum_j \log_{10}(1 + \text{dose}_j)\big)`
    (learned :math:`a`), so that a condition whose doses are all 0 maps every cell to itself.

    ``covariate_neutral`` gives, for each covariate (the last context columns), its neutral
    value :math:`u_j^0` on the context scale or ``None``; each covariate with one gates the
    residual by :math:`\tanh\big(\operatorname{softplus}(b_j)\,|u_j - u_j^0|\big)`, so the
    map is the identity at the neutral value (e.g. time 0).

    ``shift_head`` adds :class:`AdditiveShift` to the residual (inside the gates).

    ``prior`` (``"nearest"`` or ``"linear"``; ``"none"``: off) adds the shift :math:`s(c)` of
    :mod:`condmonge.models.prior` outside the gates, ``T(x, c) = x + s(c) + g(c) f(x, c)``, and
    zero where a gate closes the map (every dose 0, a gated covariate at its neutral value). Its
    tables are constants: ``prior_signature [K, P]``, ``prior_shift [K, d]`` and
    ``prior_group_mask [P]`` (nearest: which entries of the signature decide what leaves a
    condition out of its own prior), or ``prior_coef [P, d]``, ``prior_offset [P]`` and
    ``prior_intercept [d]`` (linear: the ridge on every training condition).
    """

    n_features: int
    hidden_dim: int = 128
    n_layers: int = 4
    condition_dim: int = 64
    perturbation_hidden_dim: int = 64
    pooling: str = "sum"
    dose_gate: bool = False
    shift_head: bool = False
    prior: str = "none"
    covariate_neutral: tuple[float | None, ...] = ()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, condition: EncodedConditions) -> jnp.ndarray:
        """Map cells ``x [n, d]`` under one condition; returns ``[n, d]``."""
        mean = self.variable("constants", "feature_mean", jnp.zeros, (self.n_features,))
        scale = self.variable("constants", "feature_scale", jnp.ones, (self.n_features,))
        embedding = ConditionEmbedding(
            self.condition_dim, self.perturbation_hidden_dim, self.pooling, name="condition"
        )(condition)
        h = (x - mean.value) / scale.value
        h = jnp.concatenate([h, jnp.broadcast_to(embedding, (x.shape[0], embedding.shape[-1]))], -1)
        for i in range(self.n_layers):
            h = nn.gelu(nn.Dense(self.hidden_dim, dtype=self.dtype, name=f"hidden_{i}")(h))
        # Zero-initialised output: the untrained map is the identity (Monge gap 0).
        delta = nn.Dense(
            self.n_features, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="out"
        )(h)
        delta = delta.astype(x.dtype)
        if self.shift_head:
            shift = AdditiveShift(self.perturbation_hidden_dim, self.n_features, name="shift")
            delta = delta + shift(condition.perturbation, condition.log_dose, condition.mask)
        if self.dose_gate:
            total_dose = jnp.sum(condition.log_dose * condition.mask)
            # softplus(0.5413) = 1: the gate starts as tanh(total log-dose).
            a = self.param("dose_gate", nn.initializers.constant(0.5413), ())
            delta = delta * jnp.tanh(nn.softplus(a) * total_dose)
        is_open = jnp.asarray(True)  # False where a gate makes the map the identity
        if self.dose_gate:
            is_open = total_dose > 0
        first = condition.context.shape[-1] - len(self.covariate_neutral)
        for j, neutral in enumerate(self.covariate_neutral):
            if neutral is not None:
                gap = jnp.abs(condition.context[first + j] - neutral)
                b = self.param(f"covariate_gate_{j}", nn.initializers.constant(0.5413), ())
                delta = delta * jnp.tanh(nn.softplus(b) * gap)
                is_open = is_open & (gap > 0)
        if self.prior != "none":
            delta = delta + jnp.where(is_open, self._prior_shift(condition), 0.0)
        return x + delta

    def _prior_shift(self, condition: EncodedConditions) -> jnp.ndarray:
        """The prior ``s(c) [d]`` of ``condition`` from the constants."""
        signature = condition_signature(
            condition.perturbation, condition.log_dose, condition.mask, condition.context
        )
        size, d = signature.shape[-1], self.n_features

        def constant(name, init, shape):
            return self.variable("constants", name, init, shape).value

        if self.prior == "linear":
            coef = constant("prior_coef", jnp.zeros, (size, d))
            offset = constant("prior_offset", jnp.zeros, (size,))
            intercept = constant("prior_intercept", jnp.zeros, (d,))
            return linear_shift(signature, coef, offset, intercept)
        table = constant("prior_signature", jnp.zeros, (1, size))
        shifts = constant("prior_shift", jnp.zeros, (1, d))
        group_mask = constant("prior_group_mask", jnp.ones, (size,))
        return nearest_shift(signature, signature * group_mask, table, table * group_mask, shifts)


def network_from_config(
    config: Config, n_features: int, covariate_neutral: tuple[float | None, ...] = ()
) -> ConditionalResidualMap:
    """The map of a run: ``config.model`` sizes, dose gate and precision, on ``n_features``.

    Args:
      config: the run's configuration (``model``, ``data.dose_key``, ``train.precision``).
      n_features: ``d``, the width of the cells the map acts on (genes or PCA coordinates).
      covariate_neutral: per covariate its neutral value on the context scale, or ``None``
        (:meth:`~condmonge.conditions.encoding.ConditionEncoder.neutral_features`).
    """
    m = config.model
    return ConditionalResidualMap(
        n_features=n_features,
        hidden_dim=m.hidden_dim,
        n_layers=m.n_layers,
        condition_dim=m.condition_dim,
        perturbation_hidden_dim=m.perturbation_hidden_dim,
        pooling=m.pooling,
        dose_gate=m.dose_gate if m.dose_gate is not None else config.data.dose_key is not None,
        shift_head=m.shift_head,
        # fit_map resolves auto from the data; a network built from a config alone has no
        # prior tables, so auto is no prior here.
        prior="none" if m.prior == "auto" else m.prior,
        covariate_neutral=tuple(covariate_neutral),
        dtype=jnp.bfloat16 if config.train.precision == "bfloat16" else jnp.float32,
    )
