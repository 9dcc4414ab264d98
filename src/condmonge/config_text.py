"""The default configuration as commented YAML: what ``condmonge config`` prints.

Every key of :class:`~condmonge.config.Config` has exactly one one-line comment here (a test
checks that none is missing or stale); the text is valid YAML that ``load_config`` reads back
to the defaults, so it can be saved, edited and passed to ``--config``.
"""

from __future__ import annotations

import yaml

from condmonge.config import Config

__all__ = ["COMMENTS", "SECTIONS", "default_config_text"]

SECTIONS = {
    "data": "which AnnData fields describe the conditions",
    "model": "the residual map T(x, c) = x + f([x, h(c)])",
    "loss": "fitting term + monge_gap_weight * Monge gap, averaged over conditions",
    "train": "optimisation, sampling and early stopping",
}

COMMENTS = {
    "data.condition_key": "obs column naming each cell's condition (combinations as A+B)",
    "data.control": "label of control (untreated) cells in that column",
    "data.dose_key": "obs column of doses (numbers >= 0, '1+10' for combinations); null: none",
    "data.cell_type_key": "obs column of cell types; controls are matched per cell type",
    "data.covariate_keys": "numeric obs columns added to the condition (e.g. [time])",
    "data.covariate_transforms": "per covariate: linear | log1p (e.g. {time: log1p})",
    "data.covariate_neutral": "per covariate: the value where the map is the identity",
    "data.combination_sep": "separator of perturbations in a combination label",
    "data.use_rep": "obsm key to train on (e.g. X_pca) instead of X; null: X",
    "data.n_pca": "principal components of the training cells to train in; auto: for more "
    "than 200 features, 90% of the top-100 spectrum, at most 50; null: genes",
    "data.validation_fraction": "fraction of each condition's cells kept for cells validation",
    "data.validation": "model selection on held-back: auto | conditions | cells",
    "data.validation_kind": "held-back conditions: auto (from the holdout) | combination | "
    "perturbation | cell_type | dose | covariate | random",
    "data.validation_conditions": "share of the candidate training conditions held back",
    "data.modality": "auto (detected) | rna | protein | generic: the input checks to run",
    "data.standardize": "z-score features by the training controls; null: for protein only",
    "data.features": "table inputs: feature columns (names or globs); []: every numeric one",
    "model.hidden_dim": "width of the hidden layers of f",
    "model.n_layers": "number of hidden layers of f",
    "model.condition_dim": "size of the condition embedding h(c)",
    "model.perturbation_hidden_dim": "hidden width of the per-perturbation encoder",
    "model.pooling": "how a combination pools its perturbations: sum | mean",
    "model.dose_gate": "scale the displacement by g(dose), identity at dose 0; null: if doses",
    "model.shift_head": "add a per-perturbation shift that sums over a combination",
    "model.prior": "start from a baseline's shift: auto | none | nearest | linear (ridge)",
    "loss.monge_gap_weight": "weight of the Monge gap against the fitting term",
    "loss.fit_epsilon": "entropic regularisation of the fitting term, relative to the mean cost",
    "loss.fit_epsilon_relative": "what fit_epsilon multiplies: mean | std of the cost matrix",
    "loss.fit_debias": "fitting divergence: split (independent halves, keeps spread) | self",
    "loss.monge_gap_epsilon": "entropic regularisation of the Monge gap, relative",
    "loss.cost": "transport cost: sqeuclidean | euclidean",
    "loss.sinkhorn_max_iterations": "cap on Sinkhorn iterations per solve",
    "loss.sinkhorn_threshold": "Sinkhorn convergence threshold",
    "loss.sinkhorn_momentum": "Sinkhorn momentum in [1, 2); null: none",
    "loss.sinkhorn_scaling": "solve in the scaling domain (faster on CPU); null: on CPU only",
    "train.steps": "training steps (--steps)",
    "train.conditions_per_step": "conditions in each step's batch",
    "train.cells_per_condition": "cells sampled per condition and step; auto: from the pools",
    "train.cell_sampling": "distinct (repeat no cell a pool can spare) | replacement",
    "train.learning_rate": "peak learning rate (AdamW, warmup then cosine decay)",
    "train.weight_decay": "AdamW weight decay",
    "train.input_noise": "sd of noise added to training source cells, in feature-scale units",
    "train.warmup_steps": "linear learning-rate warmup steps",
    "train.grad_clip": "clip the gradient's global norm to this; null: no clipping",
    "train.validate_every": "steps between validation losses (history.csv, early stopping)",
    "train.validation_batches": "passes over all conditions per validation",
    "train.patience": "stop after this many validations without improvement; null: never",
    "train.checkpoint_every": "steps between checkpoints (--resume continues from the last)",
    "train.seed": "random seed (--seed): initialisation, sampling, validation split",
    "train.split_seed": "seed of the validation split; null: train.seed",
    "train.n_members": "ensemble size: members trained with seeds seed, seed+1, ...",
    "train.progress": "show a progress bar",
    "train.precision": "matmul precision of the network: float32 | bfloat16",
    "train.data_parallel": "shard each step's conditions over the JAX devices; null: if several",
}


def _value(value: object) -> str:
    """A YAML scalar or flow sequence on one line."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def default_config_text() -> str:
    """The full default configuration as YAML with a one-line comment per key."""
    tree = Config().model_dump(mode="json")
    lines = [
        "# condmonge default configuration: save it, edit it, pass it with --config.",
        "# Command-line flags override the file; keys left out take these defaults.",
    ]
    for section, values in tree.items():
        lines += ["", f"{section}:  # {SECTIONS[section]}"]
        width = max(len(f"  {k}: {_value(v)}") for k, v in values.items())
        for key, value in values.items():
            entry = f"  {key}: {_value(value)}"
            lines.append(f"{entry.ljust(width)}  # {COMMENTS[f'{section}.{key}']}")
    return "\n".join(lines) + "\n"
