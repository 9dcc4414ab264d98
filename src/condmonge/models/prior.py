r"""Shift priors: ``T(x, c) = x + s(c) + f(x, c)``, with ``s`` a baseline inside the map.

Two priors, each a baseline of :mod:`condmonge.evaluate.baselines` rebuilt on the network's
condition features: ``nearest`` (the mean-shift baseline) and ``linear`` (the ridge baseline).

The mean-shift baseline predicts an unseen condition by the observed mean shift of its nearest
training condition(s). As a prior inside the map it gives the network that starting point, and
``f`` learns what it misses (the cell-dependent part, and a correction of the shift).

Each condition has a *signature*, the condition features the mean-shift baseline compares:

.. math::
    \sigma(c) = \Big[\sum_j e_j,\ \sum_j e_j \log_{10}(1 + d_j),\
        \overline{\log_{10}(1 + d)},\ \text{context}\Big]

over its perturbations :math:`j` (features :math:`e_j`, doses :math:`d_j`). With the training
conditions' signatures :math:`\sigma_k` and observed mean shifts :math:`\Delta_k` (treated mean
minus the mean of the controls of the same cell type, in the space the map acts in):

.. math::
    s(c) = \operatorname{mean}\{\Delta_k : k \in N(c)\},\quad
    N(c) = \{k \notin E(c) : \|\sigma_k - \sigma(c)\| \le \min_{l \notin E(c)}
        \|\sigma_l - \sigma(c)\| + \text{tol}\}

(ties averaged, as the baseline does). :math:`E(c)` leaves the condition out of its own prior,
so that a training condition sees the prior an unseen one would get (the network then learns to
correct the baseline's leave-one-out error, not to undo an exact shift):

- ``exclude = "condition"``: the training conditions with the signature of ``c`` (``c`` itself);
- ``exclude = "perturbation"`` (drug-out questions): every training condition with the same
  perturbations as ``c``, at any dose or cell type, since an unseen drug has none.

An unseen condition matches no training signature, so nothing is excluded for it. The tables are
fixed (the network's ``constants``), so they are saved and restored with the parameters.

The ``linear`` prior is a ridge regression from signatures to mean shifts,

.. math::
    s(c) = (\sigma(c) - \bar\sigma)\, W + \bar\Delta,\quad
    W = \arg\min_W \sum_k \|(\sigma_k - \bar\sigma) W - (\Delta_k - \bar\Delta)\|^2
        + \lambda \|W\|^2,

with :math:`\lambda = 1` (the ridge baseline's), for every condition, training ones included.
Unlike ``nearest`` it does not leave a training condition out: refitted without a drug, the
ridge was far off for a few training drugs of a development drug-out task, and the network,
taught to correct those errors, moved every unseen drug away from a good prior (mean-delta R²
top-20 -2.97 against 0.65 in-sample; docs/results/sweep_defaults.md). In sample the residuals
are small and ``f`` learns mostly the cell-dependent part.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from condmonge.conditions.encoding import EncodedConditions
from condmonge.data.prepare import CellPools
from condmonge.ops import ridge

__all__ = [
    "auto_prior",
    "condition_signature",
    "fit_ridge",
    "linear_shift",
    "nearest_shift",
    "observed_shifts",
    "perturbation_signature",
    "prior_constants",
]

#: Distances within this of the smallest are ties; signatures this close are "the same".
TIE_TOLERANCE = 1e-5
#: The ridge penalty of the ``linear`` prior (that of ``baselines.Linear``).
RIDGE_PENALTY = 1.0


def perturbation_signature(perturbation: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """``sum_j mask_j e_j`` of one condition's ``perturbation [m, p]``, ``mask [m]``: ``[p]``."""
    return jnp.sum(perturbation * mask[..., None], axis=-2)


def condition_signature(
    perturbation: jnp.ndarray, log_dose: jnp.ndarray, mask: jnp.ndarray, context: jnp.ndarray
) -> jnp.ndarray:
    r"""The signature :math:`\sigma(c)` of the module docstring, ``[2p + 1 + q]``.

    Args:
      perturbation: ``[m, p]`` perturbation features of one condition (zero where masked).
      log_dose: ``[m]`` :math:`\log_{10}(1 + \text{dose})`.
      mask: ``[m]`` 1 for a real perturbation.
      context: ``[q]`` cell-type and covariate features.
    """
    weighted = jnp.sum(perturbation * (mask * log_dose)[..., None], axis=-2)
    mean_dose = jnp.sum(mask * log_dose, axis=-1, keepdims=True) / jnp.maximum(
        jnp.sum(mask, axis=-1, keepdims=True), 1.0
    )
    return jnp.concatenate(
        [perturbation_signature(perturbation, mask), weighted, mean_dose, context], axis=-1
    )


def nearest_shift(
    signature: jnp.ndarray,
    group: jnp.ndarray,
    table_signature: jnp.ndarray,
    table_group: jnp.ndarray,
    table_shift: jnp.ndarray,
) -> jnp.ndarray:
    """The prior ``s(c) [d]``: the mean shift of the nearest training conditions outside ``E(c)``.

    Args:
      signature: ``[P]`` the condition's :func:`condition_signature`.
      group: ``[G]`` what ``E(c)`` compares: the signature itself, or the perturbation signature.
      table_signature: ``[K, P]`` the training conditions' signatures.
      table_group: ``[K, G]`` their ``group`` vectors.
      table_shift: ``[K, d]`` their observed mean shifts.

    Returns:
      ``[d]``; zeros when every training condition is excluded.
    """
    excluded = jnp.sum((table_group - group) ** 2, axis=-1) <= TIE_TOLERANCE**2
    dist = jnp.sqrt(jnp.sum((table_signature - signature) ** 2, axis=-1))
    dist = jnp.where(excluded, jnp.inf, dist)
    nearest = (dist <= jnp.min(dist) * (1 + TIE_TOLERANCE) + TIE_TOLERANCE) & ~excluded
    weight = nearest.astype(table_shift.dtype)
    return weight @ table_shift / jnp.maximum(jnp.sum(weight), 1.0)


def linear_shift(
    signature: jnp.ndarray, coef: jnp.ndarray, offset: jnp.ndarray, intercept: jnp.ndarray
) -> jnp.ndarray:
    r"""The ``linear`` prior :math:`s(c) = (\sigma(c) - \bar\sigma) W + \bar\Delta`, ``[d]``.

    Args:
      signature: ``[P]`` the condition's :func:`condition_signature`.
      coef: ``[P, d]`` the ridge coefficients :math:`W` (:func:`fit_ridge`).
      offset: ``[P]`` :math:`\bar\sigma`.
      intercept: ``[d]`` :math:`\bar\Delta`.
    """
    return (signature - offset) @ coef + intercept


def fit_ridge(
    signature: np.ndarray, shifts: np.ndarray, penalty: float = RIDGE_PENALTY
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""The centred ridge of the module docstring: ``(W [P, d], sigma_bar [P], delta_bar [d])``.

    Args:
      signature: ``[K, P]`` the training conditions' signatures.
      shifts: ``[K, d]`` their observed mean shifts.
      penalty: :math:`\lambda`.
    """
    offset, intercept = signature.mean(0), shifts.mean(0)
    return ridge(signature - offset, shifts - intercept, penalty), offset, intercept


def observed_shifts(pools: CellPools) -> np.ndarray:
    r"""Mean shift :math:`\Delta_k` of each pooled condition vs its controls, ``[K, d]``.

    Args:
      pools: the training pools: each condition's treated cells and the controls of its cell
        type (held-back validation cells are not in them).
    """
    features = np.asarray(pools.features, np.float64)
    target_rows, source_rows = np.asarray(pools.target_rows), np.asarray(pools.source_rows)
    ranges = zip(
        np.asarray(pools.target_start), np.asarray(pools.target_count),
        np.asarray(pools.source_start), np.asarray(pools.source_count), strict=True,
    )  # fmt: skip
    shifts = [
        features[target_rows[t : t + nt]].mean(0) - features[source_rows[s : s + ns]].mean(0)
        for t, nt, s, ns in ranges
    ]
    return np.asarray(shifts, np.float32).reshape(-1, features.shape[1])


#: ``model.prior: auto`` turns the ridge on for these validation kinds (unseen drugs or doses).
AUTO_PRIOR_KINDS = ("perturbation", "dose")


def auto_prior(signature: np.ndarray, kind: str) -> str:
    r"""``model.prior: auto``: ``"linear"`` where the ridge is well posed, else ``"none"``.

    On for drug-out and dose-out questions (:data:`AUTO_PRIOR_KINDS`) when the ridge does not
    interpolate the ``K`` training conditions' shifts: :math:`K > r + 1`, with :math:`r` the
    rank of the centred signatures (an intercept and :math:`r` directions). Measured on
    development tasks only (docs/results/sweep_defaults.md): the ridge prior gained 0.06-0.10
    mean-delta R² on the drug-out, dose-out and unseen-drug twins (K, r = 300, 102; 288, 113;
    24, 17) and lost on a 12-condition unseen-drug task (K = 7, r = 7: interpolated) and on
    Norman combinations (not a drug-out question).

    Args:
      signature: ``[K, P]`` the training conditions' signatures (:func:`condition_signature`).
      kind: the run's validation kind (:mod:`condmonge.data.validation`).
    """
    if kind not in AUTO_PRIOR_KINDS or signature.shape[0] < 2:
        return "none"
    centred = np.asarray(signature, np.float64) - np.mean(signature, axis=0)
    rank = int(np.linalg.matrix_rank(centred))
    return "linear" if signature.shape[0] > rank + 1 else "none"


def training_signatures(encoded: EncodedConditions) -> np.ndarray:
    """``[K, P]`` signatures of the encoded training conditions (float32)."""
    return np.asarray(
        jax.vmap(condition_signature)(
            encoded.perturbation, encoded.log_dose, encoded.mask, encoded.context
        ),
        np.float32,
    )


def prior_constants(
    pools: CellPools, encoded: EncodedConditions, kind: str, prior: str = "nearest"
) -> dict[str, np.ndarray]:
    """The network constants of the prior for the ``K`` training conditions of ``pools``.

    Args:
      pools: the training pools (``K`` conditions, in the order of ``encoded``).
      encoded: those ``K`` conditions, encoded.
      kind: the validation kind of the run; ``"perturbation"`` (drug-out) leaves out every
        condition with the same perturbations, any other kind the condition alone.
      prior: ``"nearest"`` or ``"linear"``.

    Returns:
      ``nearest``: ``prior_signature [K, P]``, ``prior_shift [K, d]`` (observed) and
      ``prior_group_mask [P]``; ``linear``: ``prior_coef [P, d]``, ``prior_offset [P]`` and
      ``prior_intercept [d]`` (:func:`fit_ridge`).
    """
    signature = training_signatures(encoded)
    group_mask = np.ones(signature.shape[1], np.float32)
    if kind == "perturbation":
        group_mask[np.asarray(encoded.perturbation).shape[-1] :] = 0.0
    shifts = observed_shifts(pools)
    if prior == "nearest":
        return {
            "prior_signature": signature,
            "prior_shift": shifts,
            "prior_group_mask": group_mask,
        }
    coef, offset, intercept = fit_ridge(signature.astype(np.float64), shifts.astype(np.float64))
    return {
        "prior_coef": coef.astype(np.float32),
        "prior_offset": offset.astype(np.float32),
        "prior_intercept": intercept.astype(np.float32),
    }
