# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Unseen combinations (Norman 2019)
#
# Predict the response to pairs of gene activations that the model never saw, from the single
# activations it did see. The data are the PerturBench development subset of Norman et al. 2019
# (CRISPRa in K562) and McFaline-Figueroa et al. 2023 (CRISPRi in three glioblastoma lines),
# shipped with condmonge (BSD-3-Clause): 5,961 cells x 500 HVGs, log1p-normalised.
#
# This page is executed every time the documentation is built, with a short training run (300
# steps, about half a minute on 2 CPU cores) so that the build stays fast. The numbers below
# are therefore those of a small model; `make demo` trains the same task for 1,500 steps and
# [RESULTS.md](../RESULTS.md) reports the full runs.

# %%
import condmonge as cm

cm.use_cpu_cores()  # before any JAX array exists: one JAX device per core

import pandas as pd
from condmonge.data.spec import ConditionSpec
from condmonge.data.splits import make_split, split_summary
from condmonge.evaluate import evaluate_prediction, make_baseline, summarize

adata = cm.datasets.norman_mcfaline()
adata

# %% [markdown]
# `obs['condition']` names the perturbed genes, combinations written `A+B`; `control` marks
# the control cells of each cell type (`obs['cell_type']`).

# %%
adata.obs.groupby("cell_type", observed=True)["condition"].agg(cells="size", conditions="nunique")

# %% [markdown]
# ## Hold out five gene pairs
#
# Five K562 pairs whose two single activations are both measured. A *combination* split puts
# every cell of the held-out pairs in `test`, and also a random quarter of every cell type's
# controls, so that predictions start from control cells the model never saw and the truth's
# mean change is measured against independent controls.

# %%
holdout = ["KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+MAP2K6", "MAP2K3+SLC38A2", "MAPK1+TGFBR2"]
spec = ConditionSpec(cell_type_key="cell_type")  # what the obs columns mean
make_split(adata, "combination", spec, holdout=holdout, seed=0)
train = adata[adata.obs["split"] == "train"].copy()
test = adata[adata.obs["split"] == "test"].copy()
split_summary(adata)

# %% [markdown]
# ## Train
#
# With 100 control cells per cell type, a map in the 500-gene space memorises its training
# controls; `n_pca=20` trains in 20 principal components of the training cells (the held-out
# cells do not enter the PCA) and returns predictions in gene space. Every other
# hyperparameter keeps its default (see [the method](../method.md)).

# %%
config = cm.Config().updated(
    {
        "data.n_pca": 20,
        "train.steps": 300,
        "train.learning_rate": 3e-3,
        "train.cells_per_condition": 128,
        "train.progress": False,
    }
)
model = cm.ConditionalMonge(config)
model.fit(train, condition_key="condition", control="control", cell_type_key="cell_type")
model.history.dropna(subset=["val_loss"])[["step", "loss", "fit", "monge_gap", "val_loss"]]

# %% [markdown]
# ## Predict the held-out pairs
#
# `predict` pushes the control cells of `test` through the map, one block of cells per
# condition. The pairs were never trained on: the set encoder embeds `KLF1+MAP2K6` as the sum
# of its two perturbations' embeddings.

# %%
pred = model.predict(test, holdout, cell_type="k562")
pred.obs[["condition", "cell_type", "condition_id", "source_index"]].head()

# %% [markdown]
# ## Compare with baselines
#
# The baselines share the model's `fit` / `predict` interface. `additive` adds the two single
# shifts; `mean_shift` uses the nearest training condition; `identity` predicts no change.
# The headline metric is `r2_delta_top20`: R² of the predicted mean change vs control over the
# 20 genes that move most in the truth.

# %%
conditions = model.query_conditions(holdout, cell_type="k562")
scores = [evaluate_prediction(pred, test, model.config.data, method="condmonge")]
for name in ["identity", "mean_shift", "additive"]:
    baseline = make_baseline(name).fit(train, spec)
    scores.append(
        evaluate_prediction(
            baseline.predict(test, conditions), test, model.config.data, method=name
        )
    )
per_condition = pd.concat(scores)
summary = summarize(per_condition)
summary[["r2_delta_top20", "r2_delta_top20_sd", "energy_distance"]].round(3)

# %% [markdown]
# With five pairs the spread is large, and 300 steps is a short run; the page shows the
# workflow, not a benchmark. Save the model to predict later:
#
# ```python
# model.save("runs/norman")
# model = cm.ConditionalMonge.load("runs/norman")
# ```
#
# The same task from the command line: `condmonge experiment examples/norman_combination.yaml
# --out runs/norman`.
