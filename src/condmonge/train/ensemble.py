r"""Ensembles: ``n_members`` maps trained with seeds ``seed, seed + 1, ...``, saved and loaded.

Member ``m`` is :func:`~condmonge.train.fit.fit_map` of the config with ``train.seed + m`` (it
draws its own initialisation, batches and validation cells); member 0 is exactly the single
model of the config, so an ensemble of one is the single model, bit for bit. Every member
shares the genes, the PCA, the z-scoring and the condition encoder, which depend on the data
only, so that their parameters stack into one vmapped apply
(:class:`~condmonge.models.transport.BatchedTransport` with ``n_members``).

On disk a run directory holds member 0 as the single model does (``model.safetensors`` and
``config.yaml``) and member ``m >= 1`` in ``members/m/`` in the same format; no pickle. A
single-member run is therefore unchanged, and any member directory loads as a single model.

The out-of-distribution score of a condition :math:`c` (:func:`ood_scores`) is, per member,

.. math::
    s_m(c) = \frac{\min_{c' \in \mathcal{C}_{\text{train}}} \|h_m(c) - h_m(c')\|}
                  {\operatorname{median}_{c' \in \mathcal{C}_{\text{train}}}
                   \min_{c'' \ne c'} \|h_m(c') - h_m(c'')\|},

the distance of its condition embedding to the nearest training condition in units of the
typical spacing of training conditions, averaged over members (each member's embedding space
is its own, so distances, not embeddings, are averaged). A training condition scores 0; about
1 is as far as training conditions are from each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import anndata as ad
import numpy as np
from scipy.spatial.distance import cdist

from condmonge.conditions.encoding import Embeddings, EncodedConditions
from condmonge.config import Config
from condmonge.data.spec import Condition
from condmonge.errors import CheckpointError
from condmonge.models.transport import BatchedTransport, condition_embeddings, stack_members
from condmonge.train.checkpoint import CHECKPOINT_NAME
from condmonge.train.fit import fit_map
from condmonge.train.persistence import TrainedMap, load_trained, save_trained

__all__ = [
    "MEMBERS_DIR",
    "OODScores",
    "ensemble_transport",
    "fit_ensemble",
    "load_ensemble",
    "member_config",
    "member_dir",
    "ood_scores",
    "save_ensemble",
]

#: Subdirectory of a run directory that holds members ``1, 2, ...``.
MEMBERS_DIR = "members"


def member_config(config: Config, member: int) -> Config:
    """The config member ``member`` is trained with: seed ``train.seed + member``.

    Every member keeps the validation split of member 0 (``train.split_seed``), so that all
    are trained on the same conditions and cells, through the same PCA.

    Args:
      config: the ensemble's config; member 0's is this object itself.
      member: ``0 <= member < config.train.n_members``.
    """
    if member == 0:  # untouched, so that one member is the single model bit for bit
        return config
    t = config.train
    return config.updated({"train.seed": t.seed + member, "train.split_seed": t.data_seed})


def member_dir(run_dir: str | Path, member: int) -> Path:
    """Where member ``member`` of the run in ``run_dir`` lives: the run itself for member 0."""
    return Path(run_dir) if member == 0 else Path(run_dir) / MEMBERS_DIR / str(member)


def fit_ensemble(
    adata: ad.AnnData,
    config: Config,
    *,
    embeddings: Embeddings | None = None,
    holdout: Sequence[str] = (),
    test_conditions: Sequence[Condition] = (),
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> list[TrainedMap]:
    """Train ``config.train.n_members`` maps in sequence (seeds ``seed, seed + 1, ...``).

    Args:
      adata, config, embeddings, holdout, test_conditions: as for
        :func:`~condmonge.train.fit.fit_map`.
      checkpoint_dir: the run directory; member ``m`` checkpoints in :func:`member_dir`.
      resume: continue each member from its checkpoint if it exists (finished members are
        not trained further).

    Returns:
      The members, member 0 first.
    """
    members = []
    for m in range(config.train.n_members):
        directory = None if checkpoint_dir is None else member_dir(checkpoint_dir, m)
        members.append(
            fit_map(
                adata,
                member_config(config, m),
                embeddings=embeddings,
                holdout=holdout,
                test_conditions=test_conditions,
                checkpoint_dir=directory,
                resume=resume,
            )
        )
    check_members(members, "the trained ensemble")
    return members


def save_ensemble(path: str | Path, members: Sequence[TrainedMap]) -> Path:
    """Write member 0 to ``path`` and member ``m`` to ``path/members/m``; return member 0's file.

    Args:
      path: the run directory.
      members: the ensemble, member 0 first.
    """
    out = save_trained(path, members[0])
    for m, member in enumerate(members[1:], start=1):
        save_trained(member_dir(path, m), member)
    return out


def load_ensemble(path: str | Path, adata: ad.AnnData | None = None) -> list[TrainedMap]:
    """Read the members of a run written by :func:`save_ensemble` (or a single model).

    Args:
      path: the run directory or its ``model.safetensors``.
      adata: optional data to predict from; its genes are checked against the model's now.
    """
    first = load_trained(path, adata)
    root = Path(path)
    root = root.parent if root.name == CHECKPOINT_NAME or root.is_file() else root
    members = [first]
    for m in range(1, first.config.train.n_members):
        directory = member_dir(root, m)
        if not (directory / CHECKPOINT_NAME).is_file():
            raise CheckpointError(
                f"'{root}' is an ensemble of {first.config.train.n_members} members but "
                f"'{directory / CHECKPOINT_NAME}' is missing; copy the whole run directory "
                f"(with {MEMBERS_DIR}/), or set train.n_members in its config.yaml to {m}"
            )
        members.append(load_trained(directory))
    check_members(members, str(root))
    return members


def check_members(members: Sequence[TrainedMap], where: str) -> None:
    """Members must share genes, conditions, PCA, z-scoring and encoder to be stacked."""
    first = members[0]
    reference = _shared_state(first)
    for m, member in enumerate(members[1:], start=1):
        same = (
            member.feature_names == first.feature_names
            and member.conditions == first.conditions
            and _same_state(_shared_state(member), reference)
        )
        if not same:
            raise CheckpointError(
                f"{where}: member {m} was trained on other genes, conditions, PCA or encoder "
                "than member 0; retrain the ensemble on one data set"
            )


def _shared_state(trained: TrainedMap) -> list[Any]:
    meta, arrays = trained.encoder.state()
    parts: list[Any] = [meta, *(arrays[k] for k in sorted(arrays)), sorted(arrays)]
    for fitted in (trained.projection, trained.standardizer):
        parts.extend([None] if fitted is None else list(fitted))
    return parts


def _same_state(a: list[Any], b: list[Any]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not np.array_equal(np.asarray(x), np.asarray(y)):
                return False
        elif x != y:
            return False
    return True


def ensemble_transport(members: Sequence[TrainedMap]) -> BatchedTransport:
    """One :class:`BatchedTransport` of every member: calls return ``[M, k, n, d]``."""
    first = members[0]
    return BatchedTransport(
        first.module(),
        stack_members([m.params for m in members]),
        stack_members([m.constants for m in members]),
        first.projection,
        first.standardizer,
        n_members=len(members),
    )


class OODScores(NamedTuple):
    """Out-of-distribution scores of ``k`` queried conditions.

    Attributes:
      score: ``[k]`` the scaled distance to the nearest training condition (module docstring);
        NaN when fewer than two distinct training conditions give no scale.
      nearest: ``[k]`` index of that training condition (in ``members[0].conditions``), by
        member 0's embedding.
      space: ``"embedding"`` (the network's :math:`h(c)`) or ``"encoder"`` (the encoder's
        features, used when the embedding does not separate the training conditions).
    """

    score: np.ndarray
    nearest: np.ndarray
    space: str


def ood_scores(members: Sequence[TrainedMap], query: EncodedConditions) -> OODScores:
    """Scaled distance of each queried condition to the training conditions (module docstring).

    Args:
      members: the ensemble (one member is fine).
      query: ``k`` encoded conditions.
    """
    first = members[0]
    train = first.encoder.encode(first.conditions)
    params = [m.params for m in members]
    q_emb = condition_embeddings(first.module(), params, query)  # [M, k, e]
    t_emb = condition_embeddings(first.module(), params, train)  # [M, K, e]
    scales = np.array([_spacing(t) for t in t_emb])
    if np.all(scales > 0):
        dist = np.stack([_distances(q, t) for q, t in zip(q_emb, t_emb, strict=True)])
        score = (dist.min(axis=-1) / scales[:, None]).mean(axis=0)
        return OODScores(score, dist[0].argmin(axis=-1), "embedding")
    q_feat, t_feat = _encoder_features(query), _encoder_features(train)
    dist, scale = _distances(q_feat, t_feat), _spacing(t_feat)
    score = dist.min(axis=-1) / scale if scale > 0 else np.full(len(q_feat), np.nan)
    return OODScores(score, dist.argmin(axis=-1), "encoder")


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[k, K]`` Euclidean distances (float64) between the rows of ``a [k, e]`` and ``b``.

    From the differences (scipy's ``cdist``), not :math:`|a|^2 + |b|^2 - 2ab`, whose
    cancellation leaves about :math:`10^{-8} |a|` between equal rows: a training condition
    must score exactly 0.
    """
    return cdist(np.asarray(a, np.float64), np.asarray(b, np.float64))


def _spacing(points: np.ndarray) -> float:
    """Median nearest-neighbour distance among ``points [K, e]``; 0 when it is degenerate."""
    if len(points) < 2:
        return 0.0
    dist = _distances(points, points)
    np.fill_diagonal(dist, np.inf)
    median = float(np.median(dist.min(axis=1)))
    size = float(np.abs(points).max()) if points.size else 0.0
    # Below float32 resolution of the coordinates: the points coincide.
    return median if median > 1e-6 * max(size, 1e-30) else 0.0


def _encoder_features(conditions: EncodedConditions) -> np.ndarray:
    """``[k, f]``: summed perturbation features and log doses (order-free), and the context."""
    mask = np.asarray(conditions.mask, np.float64)
    perturbation = (np.asarray(conditions.perturbation, np.float64) * mask[..., None]).sum(1)
    dose = (np.asarray(conditions.log_dose, np.float64) * mask).sum(1, keepdims=True)
    return np.concatenate([perturbation, dose, np.asarray(conditions.context, np.float64)], 1)
