r"""Baselines with the model's interface: ``fit(adata, ...)`` then ``predict(adata, conditions)``.

Each baseline learns from training cells only and maps control cells :math:`x` to predicted
treated cells. With :math:`\bar y_c - \bar x_{ct}` the observed mean shift of training condition
:math:`c` (vs the controls of its cell type):

- :class:`Identity`: :math:`\hat y = x` (no effect).
- :class:`MeanShift`: :math:`\hat y = x + \Delta_c` for a seen condition; for an unseen one, the
  shift of its nearest training condition(s) in condition-feature space.
- :class:`Additive`: :math:`\hat y = x + \sum_{p \in c} \Delta_{\{p\}}` for combinations.
- :class:`Linear`: :math:`\hat y = x + W \phi(c) + w_0`, ridge regression from condition features
  to mean shifts.
- :class:`MongeGapPerCondition`: one ott-jax ``MongeGapEstimator`` per condition (the paper's
  "condition-specific" model); it can only predict conditions it was fitted on.

Condition features :math:`\phi(c)` are built from an embedding table when one is given (z-scored
with the training perturbations' statistics) or a one-hot over training perturbations:
:math:`\phi(c) = [\sum_p e_p,\ \sum_p e_p \log_{10}(1+d_p),\ \overline{\log_{10}(1+d)},\
\mathrm{onehot}(\text{cell type})]`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from ott.neural.methods.monge_gap import MongeGapEstimator
from ott.neural.networks.potentials import PotentialMLP

from condmonge.conditions.spec import Condition, log_dose
from condmonge.config import LossConfig
from condmonge.data.anndata_io import align_features, feature_matrix, feature_names
from condmonge.data.pca import Projection, fit_pca
from condmonge.data.predictions import assemble_prediction, per_condition
from condmonge.data.prepare import label_cells
from condmonge.data.spec import ConditionSpec
from condmonge.errors import ConfigError, NotFittedError, UnknownConditionError, suggest
from condmonge.models.losses import monge_gap, sinkhorn_divergence
from condmonge.ops import ridge_dual

__all__ = [
    "Additive",
    "BASELINES",
    "Baseline",
    "Identity",
    "Linear",
    "MeanShift",
    "MongeGapPerCondition",
    "make_baseline",
]


class Baseline:
    """Common fit/predict plumbing; subclasses implement :meth:`_fit` and :meth:`transport`."""

    name = "baseline"

    def __init__(self) -> None:
        self.spec: ConditionSpec | None = None
        self.feature_names: list[str] = []
        self.conditions: list[Condition] = []

    def fit(
        self,
        adata: ad.AnnData,
        spec: ConditionSpec | None = None,
        *,
        embeddings: Mapping[str, pd.DataFrame] | None = None,
    ) -> Baseline:
        """Learn from the treated and control cells of ``adata`` (the training cells).

        Args:
          adata: cells x features, annotated as ``spec`` says.
          spec: the data's meaning; ``None`` is the default spec.
          embeddings: condition tables keyed by ``spec.condition_key`` (for baselines that
            use one).
        """
        self.spec = spec = (spec or ConditionSpec()).validate(adata)
        cells = label_cells(adata, spec)
        self.conditions = list(cells.conditions)
        self.feature_names = feature_names(adata, spec.use_rep)
        x = feature_matrix(adata, spec.use_rep)
        table = (embeddings or {}).get(spec.condition_key)
        self._fit(x, cells, table)
        return self

    def _fit(self, x: np.ndarray, cells, table: pd.DataFrame | None) -> None:
        """Estimate what the baseline needs from features ``x`` and labelled ``cells``."""

    def transport(self, x: np.ndarray, condition: Condition) -> np.ndarray:
        """Predicted treated cells for control cells ``x [n, d]`` under ``condition``."""
        raise NotImplementedError

    def predict(self, adata: ad.AnnData, conditions: Sequence[Condition]) -> ad.AnnData:
        """Predict each condition from the control cells of ``adata`` (the model's layout)."""
        if self.spec is None:
            raise NotFittedError(f"baseline '{self.name}' is not fitted; call `fit` first")
        x = align_features(adata, self.feature_names, self.spec.use_rep)
        return assemble_prediction(
            adata, x, conditions, per_condition(self.transport, conditions), self.spec,
            self.feature_names,
            uns={"method": self.name},
        )  # fmt: skip


class Identity(Baseline):
    """No effect: the control cells themselves."""

    name = "identity"

    def transport(self, x: np.ndarray, condition: Condition) -> np.ndarray:  # noqa: D102
        return np.array(x, np.float32, copy=True)


class _ConditionFeatures:
    """The condition feature map phi(c) of the module docstring."""

    def __init__(self, conditions: Sequence[Condition], table: pd.DataFrame | None):
        names = sorted({p for c in conditions for p in c.perturbations})
        self.names = names
        self.table = None
        if table is not None:
            numeric = table.select_dtypes("number").astype(np.float64)
            seen = numeric.loc[numeric.index.intersection(names)]
            mean, sd = seen.mean(), seen.std(ddof=0).replace(0.0, 1.0).fillna(1.0)
            self.table = ((numeric - mean) / sd).fillna(0.0)
        self.cell_types = sorted({str(c.cell_type) for c in conditions if c.cell_type})

    def perturbation(self, name: str) -> np.ndarray:
        if self.table is not None and name in self.table.index:
            return self.table.loc[name].to_numpy()
        if self.table is None and name in self.names:
            out = np.zeros(len(self.names))
            out[self.names.index(name)] = 1.0
            return out
        where = "the embedding table" if self.table is not None else "training"
        raise UnknownConditionError(
            f"perturbation '{name}' is not in {where}; baselines need it there to place it"
        )

    def __call__(self, c: Condition) -> np.ndarray:
        vectors = [self.perturbation(p) for p in c.perturbations]
        doses = np.array([log_dose(d) for d in c.doses])
        ct = np.zeros(len(self.cell_types))
        if c.cell_type in self.cell_types:
            ct[self.cell_types.index(c.cell_type)] = 1.0
        return np.concatenate(
            [
                np.sum(vectors, 0),
                np.sum([v * d for v, d in zip(vectors, doses, strict=True)], 0),
                [doses.mean()],
                ct,
            ]
        )


def _mean_shifts(x: np.ndarray, cells, conditions: Sequence[Condition]) -> dict[str, np.ndarray]:
    """Observed mean shift of every condition vs the controls of its cell type (by key)."""
    control_mean = {}
    for ct in {c.cell_type for c in conditions}:
        rows = cells.is_control & (
            (cells.cell_type_of_cell == ct) if ct is not None else np.ones(len(x), bool)
        )
        control_mean[ct] = x[rows].mean(0)
    return {
        c.key(): x[cells.condition_of_cell == i].mean(0) - control_mean[c.cell_type]
        for i, c in enumerate(conditions)
    }


class MeanShift(Baseline):
    """Control + the condition's training mean shift (nearest training condition if unseen)."""

    name = "mean_shift"

    def _fit(self, x, cells, table):
        self.shifts = _mean_shifts(x, cells, self.conditions)
        self.features = _ConditionFeatures(self.conditions, table)
        self.matrix = np.stack([self.features(c) for c in self.conditions])

    def shift(self, condition: Condition) -> np.ndarray:
        """The training shift of ``condition``, or the mean over its nearest training conditions.

        Ties (e.g. the same perturbation in every other cell type) are averaged.
        """
        if condition.key() in self.shifts:
            return self.shifts[condition.key()]
        dist = np.linalg.norm(self.matrix - self.features(condition), axis=1)
        nearest = np.flatnonzero(dist <= dist.min() + 1e-9)
        return np.mean([self.shifts[self.conditions[i].key()] for i in nearest], 0)

    def transport(self, x, condition):  # noqa: D102
        return (x + self.shift(condition)).astype(np.float32)


class Additive(MeanShift):
    """Control + the sum of the single perturbations' shifts (same cell type and dose)."""

    name = "additive"

    def transport(self, x, condition):  # noqa: D102
        total = np.zeros(x.shape[1])
        for p, dose in zip(condition.perturbations, condition.doses, strict=True):
            total += self.shift(Condition((p,), (dose,), condition.cell_type, condition.covariates))
        return (x + total).astype(np.float32)


class Linear(MeanShift):
    """Control + a ridge regression from condition features to the mean shift."""

    name = "linear"

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha

    def _fit(self, x, cells, table):
        super()._fit(x, cells, table)
        phi = self.matrix
        y = np.stack([self.shifts[c.key()] for c in self.conditions])
        self.phi_mean, self.y_mean = phi.mean(0), y.mean(0)
        # Ridge in the dual: there are fewer conditions than features.
        self.coef = ridge_dual(phi - self.phi_mean, y - self.y_mean, self.alpha)

    def transport(self, x, condition):  # noqa: D102
        shift = (self.features(condition) - self.phi_mean) @ self.coef + self.y_mean
        return (x + shift).astype(np.float32)


class MongeGapPerCondition(Baseline):
    r"""One unconditional Monge gap map per condition (ott-jax's ``MongeGapEstimator``).

    Each map :math:`T_c(x) = x + \mathrm{MLP}(x)` minimises
    :math:`S_\varepsilon(T_c\sharp\mu_c, \nu_c) + \lambda M_{\mu_c}(T_c)` on its own
    condition's cells, in the first ``n_pca`` principal components of the fitted data when
    ``n_pca`` is set (predictions are returned in feature space). Every condition compiles its
    own training step, which is the cost of being condition-specific.
    """

    name = "monge_gap"

    def __init__(
        self,
        steps: int = 500,
        batch_size: int = 256,
        hidden: Sequence[int] = (64, 64),
        learning_rate: float = 1e-3,
        n_pca: int | None = None,
        loss: LossConfig | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.steps, self.batch_size, self.hidden = steps, batch_size, tuple(hidden)
        self.learning_rate, self.n_pca, self.seed = learning_rate, n_pca, seed
        self.loss = loss or LossConfig()
        self.maps: dict[str, Any] = {}
        self.projection: Projection | None = None

    def _fit(self, x, cells, table):
        if self.n_pca is not None:
            self.projection = fit_pca(x, min(self.n_pca, *x.shape))
            x = self.projection.encode(x)
        scale = x.std(0).mean() + 1e-8  # networks train on unit-scale inputs
        self.scale = float(scale)
        rng = np.random.default_rng(self.seed)
        loss_cfg = self.loss

        def fitting(mapped, target):
            return sinkhorn_divergence(mapped, target, loss_cfg), None

        def regulariser(source, mapped):
            return monge_gap(source, mapped, loss_cfg), None

        def loader(arr):
            while True:
                yield jnp.asarray(arr[rng.integers(0, len(arr), self.batch_size)] / scale)

        for i, cond in enumerate(self.conditions):
            ct_rows = (
                cells.cell_type_of_cell == cond.cell_type
                if cond.cell_type is not None
                else np.ones(len(x), bool)
            )
            source = x[cells.is_control & ct_rows]
            target = x[cells.condition_of_cell == i]
            estimator = MongeGapEstimator(
                dim_data=x.shape[1],
                model=PotentialMLP(dim_hidden=self.hidden, is_potential=False, act_fn=jax.nn.gelu),
                optimizer=optax.adam(self.learning_rate),
                fitting_loss=fitting,
                regularizer=regulariser,
                regularizer_strength=loss_cfg.monge_gap_weight,
                num_train_iters=self.steps,
                rng=jax.random.key(self.seed + i),
            )
            state, _ = estimator.train_map_estimator(
                loader(source), loader(target), loader(source), loader(target)
            )
            self.maps[cond.key()] = (state.apply_fn, state.params)

    def transport(self, x, condition):  # noqa: D102
        if condition.key() not in self.maps:
            raise UnknownConditionError(
                f"the per-condition Monge gap baseline was not fitted on '{condition.key()}'; it "
                "cannot predict conditions without their own training cells"
            )
        apply_fn, params = self.maps[condition.key()]
        z = self.projection.encode(x) if self.projection is not None else x
        mapped = np.asarray(apply_fn({"params": params}, jnp.asarray(z / self.scale))) * self.scale
        if self.projection is None:
            return mapped.astype(np.float32)
        return self.projection.decode_displacement(x, z, mapped)


#: Baselines by name (constructors taking keyword options).
BASELINES = {
    "identity": Identity,
    "mean_shift": MeanShift,
    "additive": Additive,
    "linear": Linear,
    "monge_gap": MongeGapPerCondition,
}


def make_baseline(name: str, **options: Any) -> Baseline:
    """Instantiate a baseline by name (see :data:`BASELINES`).

    Args:
      name: a key of :data:`BASELINES`.
      **options: the baseline's constructor options.
    """
    if name not in BASELINES:
        raise ConfigError(
            f"unknown baseline '{name}'{suggest(name, BASELINES)}; choose from {sorted(BASELINES)}"
        )
    return BASELINES[name](**options)
