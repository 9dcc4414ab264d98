"""Validated configuration of a condmonge run.

Pydantic validates at the boundary (Python, YAML, CLI flags); the validated values are then closed
over as static constants by the jitted functions. Unknown keys are errors, never ignored.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from condmonge.data.spec import ConditionSpec
from condmonge.errors import ConfigError

__all__ = [
    "Config",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "StrictModel",
    "TrainConfig",
    "load_config",
    "read_yaml_mapping",
    "validate_tree",
]


class StrictModel(BaseModel):
    """A frozen pydantic model whose unknown keys are errors (the base of every config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_Strict = StrictModel
_Model = TypeVar("_Model", bound=StrictModel)


def validate_tree(
    cls: type[_Model], tree: dict[str, Any], source: str = "config", unknown_hint: str = ""
) -> _Model:
    """Validate a nested mapping into ``cls``; a :class:`ConfigError` names the offending key.

    Args:
      cls: the :class:`StrictModel` subclass to build.
      tree: the nested mapping (e.g. parsed YAML).
      source: where ``tree`` came from, for the message (a file name).
      unknown_hint: appended to the message of an unknown key (e.g. the valid sections).
    """
    try:
        return cls.model_validate(tree)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden" and unknown_hint:
            raise ConfigError(f"{source}: unknown key '{where}'; {unknown_hint}") from None
        raise ConfigError(f"{source}: '{where}': {err['msg']}") from None


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """Read a YAML file of sections (safe loader: data only, no tags); empty gives ``{}``.

    Args:
      path: the file.
      what: how messages name it (``"config file"``, ``"experiment config"``).

    Raises:
      ConfigError: the file is missing, not YAML, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} '{path}' does not exist")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} '{path}' is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{what} '{path}' must hold a mapping of sections")
    return tree


class DataConfig(_Strict):
    """Which AnnData fields describe the conditions (:attr:`spec`) and how features are read.

    The first seven fields are those of :class:`~condmonge.data.spec.ConditionSpec`, flat so
    that a YAML file reads ``data: {condition_key: drug}``; every layer below the config reads
    :attr:`spec`, never these loose keys.
    """

    condition_key: str = "condition"
    control: str = "control"
    dose_key: str | None = None
    cell_type_key: str | None = None
    covariate_keys: tuple[str, ...] = ()
    # How each numeric covariate enters the condition (default linear), and an optional value
    # at which the map is the identity (as at dose 0), e.g. {"time": "log1p"}, {"time": 0}.
    covariate_transforms: dict[str, Literal["linear", "log1p"]] = {}
    covariate_neutral: dict[str, float] = {}
    combination_sep: str = "+"
    use_rep: str | None = Field(
        default=None, description="obsm key to train on (e.g. 'X_pca'); None uses X."
    )
    n_pca: int | Literal["auto"] | None = Field(
        default="auto",
        description="train in this many principal components of the training cells "
        "(predictions are returned in gene space); 'auto': for X with more than 200 features, "
        "the fewest components explaining 90% of the top-100 spectrum, at most 50; None: "
        "the features as they are",
    )
    validation_fraction: float = Field(
        default=0.1,
        ge=0.0,
        lt=0.9,
        description="share of each condition's cells held back when validating on cells",
    )
    # Model selection (early stopping, best parameters) on held-back training *conditions* of
    # the kind the test set asks about (condmonge.data.validation); "cells" is the old
    # held-back-cells validation, the fallback when too few conditions exist.
    validation: Literal["auto", "conditions", "cells"] = "auto"
    validation_kind: Literal[
        "auto", "combination", "perturbation", "cell_type", "dose", "covariate", "random"
    ] = "auto"
    validation_conditions: float = Field(
        default=0.2,
        gt=0.0,
        lt=1.0,
        description="share of the candidate training conditions held back for validation "
        "(at least one; chosen by train.seed)",
    )
    # What X measures: the raw-count / log checks apply to rna only; "auto" detects it
    # (condmonge.data.anndata_io.detect_modality) and the fitted model stores the result.
    modality: Literal["auto", "rna", "protein", "generic"] = "auto"
    standardize: bool | None = Field(
        default=None,
        description="z-score every feature with the mean and sd of the training controls "
        "before training (predictions are returned on the original scale); None: on for "
        "protein data, off otherwise",
    )
    features: tuple[str, ...] = Field(
        default=(), description="table inputs: feature columns (names or globs); () = numeric"
    )

    @field_validator("n_pca", mode="before")
    @classmethod
    def _parse_n_pca(cls, value: Any) -> Any:
        # The command line passes text: "auto", "none" or a number.
        if isinstance(value, str):
            text = value.strip().lower()
            if text in ("none", "null", ""):
                return None
            if text != "auto" and not text.isdigit():
                raise ValueError(f"n_pca must be a number, 'auto' or 'none', not {value!r}")
            return text if text == "auto" else int(text)
        return value

    @field_validator("n_pca")
    @classmethod
    def _positive_n_pca(cls, value: Any) -> Any:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"n_pca must be a number >= 1, 'auto' or none, not {value}")
        return value

    @model_validator(mode="after")
    def _covariates_are_declared(self) -> DataConfig:
        for field in ("covariate_transforms", "covariate_neutral"):
            unknown = set(getattr(self, field)) - set(self.covariate_keys)
            if unknown:
                raise ValueError(
                    f"{field} names {sorted(unknown)}, which are not covariate_keys "
                    f"{list(self.covariate_keys)}; add them to covariate_keys (--covariate-key)"
                )
        return self

    @property
    def spec(self) -> ConditionSpec:
        """The frozen :class:`~condmonge.data.spec.ConditionSpec` of these fields."""
        return ConditionSpec(**{name: getattr(self, name) for name in _SPEC_FIELDS})

    def with_spec(self, spec: ConditionSpec) -> DataConfig:
        """A copy whose spec fields are those of ``spec`` (the other fields are kept)."""
        return self.model_copy(update=spec.to_dict() | {"covariate_keys": spec.covariate_keys})


_SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(ConditionSpec))


class ModelConfig(_Strict):
    """Residual map ``T(x, c) = x + f([x, h(c)])``."""

    hidden_dim: int = Field(default=128, gt=0)
    n_layers: int = Field(default=4, gt=0)
    condition_dim: int = Field(default=64, gt=0)
    perturbation_hidden_dim: int = Field(default=64, gt=0)
    # Sum pooling is the additive prior for combinations (embedding of A+B = phi(A) + phi(B));
    # on the demo's held-out pairs it gave mean-delta R² 0.51-0.53 vs 0.35-0.41 for mean (2 seeds).
    pooling: Literal["mean", "sum"] = "sum"
    # T(x, c) = x + g(dose) f(...) with g = 0 when every dose is 0, so dose 0 is the identity
    # exactly. None: on when the data have a dose column (data.dose_key), off otherwise.
    dose_gate: bool | None = None
    # T(x, c) = x + f(...) + sum_j s(e_j, dose_j): a shift that adds up over a combination's
    # perturbations (condmonge.models.networks.AdditiveShift).
    shift_head: bool = False
    # T(x, c) = x + s(c) + f(...): s(c) is a baseline's shift, leaving c out of its own
    # (condmonge.models.prior): nearest = the observed mean shift of the nearest training
    # condition(s), linear = a ridge from condition features to mean shifts, auto = linear for
    # drug-out and dose-out questions with enough training conditions (auto_prior), else none
    # (development measurements in docs/results/sweep_defaults.md); tune searches it.
    prior: Literal["auto", "none", "nearest", "linear"] = "auto"


class LossConfig(_Strict):
    """Fitting term + ``monge_gap_weight`` times the Monge gap, averaged over conditions.

    Both entropic regularisations are *relative*: ``epsilon`` multiplies the mean of the cost
    matrix of the batch (ott-jax ``relative_epsilon="mean"``; for the fitting term optionally
    its standard deviation, ``fit_epsilon_relative``), so they act alike in 2 or 2000
    dimensions. The fitting term is the split-half Sinkhorn divergence by default
    (``fit_debias``; :func:`condmonge.models.losses.split_divergence`).
    """

    monge_gap_weight: float = Field(default=1.0, ge=0.0)
    fit_epsilon: float = Field(default=0.1, gt=0.0)
    # What fit_epsilon multiplies: the mean or the standard deviation of the batch cost matrix.
    fit_epsilon_relative: Literal["mean", "std"] = "mean"
    # How the fitting divergence removes its biases (condmonge.models.losses.split_divergence):
    # "self" is the Sinkhorn divergence of the batch (its self terms compare each cloud with
    # itself, which leaves the sampling bias in and shrinks the predicted spread); "split"
    # compares independent halves, so its expectation is 0 at the truth.
    fit_debias: Literal["self", "split"] = "split"
    monge_gap_epsilon: float = Field(default=0.02, gt=0.0)
    cost: Literal["sqeuclidean", "euclidean"] = "sqeuclidean"
    # Truncated solves: on the synthetic benchmark 30, 50 and 100 iterations give the same
    # L2-UVP, and high-dimensional batches converge well before the cap.
    sinkhorn_max_iterations: int = Field(default=50, gt=0)
    sinkhorn_threshold: float = Field(default=1e-3, gt=0.0)
    sinkhorn_momentum: float | None = Field(default=None, ge=1.0, lt=2.0)
    sinkhorn_scaling: bool | None = Field(
        default=None,
        description="solve in the scaling (kernel) domain (faster on CPU), redoing a step in the "
        "log domain when a solve is unsound; None: on CPU only (on GPUs the log domain is faster)",
    )


class TrainConfig(_Strict):
    """Optimisation, sampling and early stopping."""

    @property
    def data_seed(self) -> int:
        """The seed of the validation split: ``split_seed``, or ``seed`` when it is unset."""
        return self.seed if self.split_seed is None else self.split_seed

    @field_validator("cells_per_condition")
    @classmethod
    def _at_least_two_cells(cls, value: int | str) -> int | str:
        if value != "auto" and value < 2:
            raise ValueError(f"cells_per_condition must be 'auto' or a number >= 2, not {value}")
        return value

    steps: int = Field(default=2000, gt=0)
    conditions_per_step: int = Field(default=8, gt=0)
    cells_per_condition: int | Literal["auto"] = Field(
        default=256,
        description="cells sampled per condition and step; auto: the 25th percentile of the "
        "training conditions' cells (fewer of their source or target cells), in multiples of 8 "
        "within [32, 256], so that most draws repeat no cell",
    )
    cell_sampling: Literal["distinct", "replacement"] = Field(
        default="replacement",
        description="distinct: a draw repeats no cell of a pool large enough "
        "(condmonge.data.sampler.distinct_offsets); replacement: uniform with replacement",
    )
    # 3e-3 (was 1e-3): better on 3 of 4 development tasks at 300 steps and on the Norman
    # development pairs at 2,000 (docs/results/sweep_defaults.md).
    learning_rate: float = Field(default=3e-3, gt=0.0)
    weight_decay: float = Field(default=1e-5, ge=0.0)
    input_noise: float = Field(
        default=0.0,
        ge=0.0,
        description="sd of Gaussian noise added to the source cells of each training step, in "
        "units of the feature scale (training only; 0 = off)",
    )
    warmup_steps: int = Field(default=100, ge=0)
    grad_clip: float | None = Field(default=1.0, gt=0.0)
    validate_every: int = Field(default=100, gt=0)
    validation_batches: int = Field(default=1, gt=0, description="passes over all conditions")
    patience: int | None = Field(default=10, gt=0, description="evaluations without improvement")
    checkpoint_every: int = Field(default=500, gt=0)
    seed: int = 0
    split_seed: int | None = Field(
        default=None,
        description="seed of the validation split (which conditions and cells are held back); "
        "None: train.seed. The members of an ensemble share their first member's split",
    )
    n_members: int = Field(
        default=1,
        ge=1,
        description="ensemble size: members trained in sequence with seeds seed, seed+1, ...",
    )
    progress: bool = True
    precision: Literal["float32", "bfloat16"] = Field(
        default="float32",
        description="matmul precision of the network (parameters and OT solves stay float32)",
    )
    data_parallel: bool | None = Field(
        default=None,
        description="shard the conditions of each step over the JAX devices (jax.sharding): "
        "None = when this process sees several devices (on as many of them as divide "
        "conditions_per_step); true = over all devices, conditions_per_step must be a multiple "
        "of their count; false = never",
    )


class Config(_Strict):
    """Every hyperparameter of a run; one YAML file holds all of it."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()

    def updated(self, overrides: dict[str, Any]) -> Config:
        """Return a copy with dotted-key overrides, e.g. ``{"train.steps": 100}``, validated.

        Args:
          overrides: ``{"section.key": value}``.
        """
        tree = self.model_dump()
        for dotted, value in overrides.items():
            node = tree
            *parents, leaf = dotted.split(".")
            for part in parents:
                if part not in node or not isinstance(node[part], dict):
                    raise ConfigError(f"unknown config key '{dotted}'")
                node = node[part]
            if leaf not in node:
                raise ConfigError(f"unknown config key '{dotted}'")
            node[leaf] = value
        return config_from_dict(tree)

    def to_yaml(self, path: str | Path) -> None:
        """Write the full configuration as YAML.

        Args:
          path: the file to write.
        """
        Path(path).write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))


def config_from_dict(tree: dict[str, Any], source: str = "config") -> Config:
    """Validate a nested mapping into a :class:`Config`; errors name the offending key.

    Args:
      tree: nested mapping ``{section: {key: value}}``.
      source: where it came from, for messages.
    """
    return validate_tree(
        Config,
        tree,
        source,
        "valid sections are data, model, loss, train (see `condmonge.Config` for every key)",
    )


def load_config(path: str | Path) -> Config:
    """Read a YAML config (safe loader only); missing keys take their defaults.

    Args:
      path: the YAML file.

    Raises:
      ConfigError: missing file, invalid YAML, unknown or ill-typed key.
    """
    return config_from_dict(read_yaml_mapping(path), source=str(path))
