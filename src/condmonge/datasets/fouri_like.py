r"""A semi-synthetic 4i-shaped data set: real drugs, protein-imaging-like features, time points.

Shaped like the 4i melanoma screen of Bunne et al. (multiplexed protein imaging: per-cell
intensities of about 20 markers in nucleus and cytoplasm plus morphology, 35 therapies, about
100,000 cells): the 31 drugs of ``4i_drug_smiles.csv`` (shipped), 48 features and several time
points, with ground-truth optimal-transport maps so that predictions can be scored by L2-UVP.

Control cells (the vehicle, the same population at every time point) have 48 features on a
scaled (centred) axis, so about half of the values are negative:

- six blocks of eight features share a latent factor each (correlated blocks);
- Student-t noise with 3 degrees of freedom (heavy tails);
- a cycling state (about 35 % of the cells) shifts the cell-cycle markers (bimodal features);
- feature scales differ by a factor of about ten (intensities vs morphology).

Drug ``d`` at time ``t`` maps a control cell ``x`` to

.. math::
    T_{d,t}(x) = x + s(t)\,\nabla\psi_{e_d}(x), \qquad s(t) = 1 - e^{-t/24},

with :math:`\psi_e` the convex potential of :class:`~condmonge.datasets.synthetic.ConvexTask`
(a Brenier map at every ``t``) and :math:`e_d` a hidden embedding computed from the drug's RDKit
descriptors exactly as in :mod:`condmonge.datasets.sciplex_like` (z-scored, randomly projected,
unit variance): responses are a smooth function of chemistry and saturate in time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources

import anndata as ad
import numpy as np
import pandas as pd

from condmonge.conditions.smiles import read_smiles_table
from condmonge.datasets.sciplex_like import hidden_embedding
from condmonge.datasets.synthetic import ConvexTask, convex_task
from condmonge.errors import ConfigError, DataError, UnknownConditionError, suggest

__all__ = ["FEATURES", "FouriLikeTask", "fouri_like", "fouri_smiles"]

_MARKERS = (
    "pEGFR", "pERK", "pMEK", "pAKT", "pS6", "pRB", "Ki67", "CyclinB1", "CyclinD1", "p21",
    "p53", "gH2AX", "cPARP", "cCasp3", "MITF", "SOX10", "SOX9", "NGFR", "AXL", "HES1",
)  # fmt: skip
_MORPHOLOGY = (
    "area_nucleus", "area_cell", "perimeter_cell", "eccentricity", "solidity", "dna_content",
    "nuclear_roundness", "local_density",
)  # fmt: skip
#: The 48 feature names: 20 markers x (nucleus, cytoplasm) and 8 morphology features.
FEATURES = tuple(f"{m}_{part}" for m in _MARKERS for part in ("nuc", "cyto")) + _MORPHOLOGY
# Features shifted by the cycling state (bimodal).
_CYCLING = ("Ki67_nuc", "Ki67_cyto", "CyclinB1_nuc", "CyclinB1_cyto", "pRB_nuc", "dna_content")
_SMILES_FILE = "bunne2023_4i_drug_smiles.csv"
_TIME_CONSTANT = 24.0  # hours: s(t) = 1 - exp(-t / 24)


def fouri_smiles() -> pd.Series:
    """The 31 drugs of the 4i screen and their SMILES (shipped; MIT, see ``_files/README.md``)."""
    with resources.as_file(resources.files(__package__) / "_files" / _SMILES_FILE) as path:
        return read_smiles_table(path, "drug", "smile")


@dataclass(frozen=True)
class FouriLikeTask:
    """A 4i-shaped task with known maps.

    Attributes:
      adata: controls and treated cells; ``obs['drug']`` (a drug or the control label) and
        ``obs['time']`` (hours; controls are spread over the time points).
      hidden_embedding: the hidden embedding ``e_d`` of each drug (the truth, not an input).
      smiles: the SMILES of each drug; drugs, times, control: what the data cover.
    """

    adata: ad.AnnData
    hidden_embedding: pd.DataFrame
    smiles: pd.Series
    drugs: list[str]
    times: tuple[float, ...]
    control: str
    _maps: ConvexTask = field(repr=False)
    _controls: dict[str, np.ndarray] = field(repr=False)

    @staticmethod
    def time_scale(time: float) -> float:
        """``s(t) = 1 - exp(-t / 24)``: 0 at ``t = 0`` (the identity), saturating."""
        if not math.isfinite(time) or time < 0:
            raise ConfigError(f"time must be a finite number >= 0, got {time!r}")
        return 1.0 - math.exp(-float(time) / _TIME_CONSTANT)

    def true_map(self, drug: str, time: float, x: np.ndarray) -> np.ndarray:
        """Ground-truth map of ``drug`` at ``time`` applied to ``x [n, 48]`` (float64)."""
        x = np.array(x, np.float64)
        scale = self.time_scale(time)
        if drug == self.control or scale == 0.0:
            return x
        if drug not in self.hidden_embedding.index:
            raise UnknownConditionError(
                f"drug '{drug}' is not in this task{suggest(drug, self.drugs)}"
            )
        e = self.hidden_embedding.loc[drug].to_numpy(np.float64)
        return x + scale * (self._maps.map_embedding(e, x) - x)

    def sample_controls(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` fresh control cells ``[n, 48]`` (float32)."""
        return _controls(np.random.default_rng(seed), self._controls, n)

    def to_frame(self) -> pd.DataFrame:
        """The cells as one table: ``drug``, ``time`` and the 48 feature columns."""
        frame = pd.DataFrame(self.adata.X, columns=list(self.adata.var_names))
        frame.insert(0, "time", self.adata.obs["time"].to_numpy())
        frame.insert(0, "drug", self.adata.obs["drug"].astype(str).to_numpy())
        return frame


def _control_parameters(rng: np.random.Generator) -> dict[str, np.ndarray]:
    d = len(FEATURES)
    cycling = np.isin(np.asarray(FEATURES), _CYCLING)
    return {
        "block": rng.permutation(np.repeat(np.arange(6), 8)),
        "loading": rng.uniform(1.0, 1.8, d) * rng.choice([-1.0, 1.0], d),
        "spread": rng.uniform(0.3, 0.6, d),
        "shift": np.where(cycling, rng.uniform(2.5, 3.5, d), 0.0),
        "offset": rng.normal(scale=0.3, size=d),
        "scale": np.exp(rng.uniform(np.log(0.4), np.log(4.0), d)),
        "p_cycling": np.array(0.35),
    }


def _controls(rng: np.random.Generator, theta: dict[str, np.ndarray], n: int) -> np.ndarray:
    factors = rng.normal(size=(n, 6))[:, theta["block"]]
    noise = rng.standard_t(3.0, size=(n, len(FEATURES))) * theta["spread"]
    state = (rng.random(n) < theta["p_cycling"])[:, None]
    z = theta["loading"] * factors + noise + state * theta["shift"]
    # Centred like a scaled imaging export: the cycling shift is not mean-zero on its own.
    z = z - theta["p_cycling"] * theta["shift"]
    return ((z + theta["offset"]) * theta["scale"]).astype(np.float32)


def fouri_like(  # noqa: PLR0913  a generator's design knobs are its parameters
    smiles: pd.Series | None = None,
    n_drugs: int | None = None,
    times: Sequence[float] = (6.0, 24.0, 48.0),
    n_cells: int = 1000,
    n_controls: int | None = None,
    hidden_dim: int = 6,
    control: str = "control",
    seed: int = 0,
) -> FouriLikeTask:
    """Build a :class:`FouriLikeTask` (defaults: 31 drugs x 3 times x 1,000 + 6,000 controls).

    Args:
      smiles: SMILES indexed by drug name; ``None``: the shipped 4i drugs (:func:`fouri_smiles`).
      n_drugs: keep the first ``n_drugs`` drugs (table order); ``None`` keeps all.
      times: time points (hours, > 0) at which every drug is observed.
      n_cells: treated cells per (drug, time); n_controls: control cells in total (default
        ``2 * n_cells * len(times)``), spread evenly over the time points.
      hidden_dim: dimension of the hidden embedding.
      seed: the same seed (and SMILES) gives the same task.
    """
    series = fouri_smiles() if smiles is None else pd.Series(smiles).copy()
    series.index = series.index.astype(str)
    series = series.drop(index=control, errors="ignore")
    if series.index.has_duplicates:
        raise DataError(f"drug '{series.index[series.index.duplicated()][0]}' is listed twice")
    if n_drugs is not None:
        if not 2 <= n_drugs <= len(series):
            raise ConfigError(f"n_drugs must be in [2, {len(series)}], got {n_drugs}")
        series = series.iloc[:n_drugs]
    times = tuple(float(t) for t in times)
    if not times or not all(math.isfinite(t) and t > 0 for t in times):
        raise ConfigError(f"times must be a non-empty list of numbers > 0, got {times}")
    if n_cells < 1 or hidden_dim < 1:
        raise ConfigError("n_cells and hidden_dim must be >= 1")
    n_controls = 2 * n_cells * len(times) if n_controls is None else n_controls
    if n_controls < len(times):
        raise ConfigError(f"n_controls must be >= the number of time points, got {n_controls}")
    rng = np.random.default_rng(seed)
    maps = convex_task(
        n_conditions=1, n_features=len(FEATURES), n_cells=1, embedding_dim=hidden_dim,
        n_unseen=0, seed=int(rng.integers(2**31)),
    )  # fmt: skip
    theta = _control_parameters(rng)
    drugs = [str(d) for d in series.index]
    task = FouriLikeTask(
        ad.AnnData(np.zeros((0, len(FEATURES)), np.float32)),
        hidden_embedding(series, rng, hidden_dim, index_name="drug"),
        series.rename("smiles"),
        drugs,
        times,
        control,
        maps,
        theta,
    )
    return _populate(task, rng, n_cells, n_controls, seed)


def _populate(
    task: FouriLikeTask, rng: np.random.Generator, n_cells: int, n_controls: int, seed: int
) -> FouriLikeTask:
    """Draw the controls and push fresh control draws through every (drug, time) map."""
    times = task.times
    blocks = [_controls(rng, task._controls, n_controls)]
    codes = [np.zeros(n_controls, np.int32)]
    time_col = [np.resize(np.asarray(times), n_controls)]
    for index, drug in enumerate(task.drugs):
        for time in times:
            fresh = _controls(rng, task._controls, n_cells)  # unpaired: new draws
            blocks.append(task.true_map(drug, time, fresh).astype(np.float32))
            codes.append(np.full(n_cells, index + 1, np.int32))
            time_col.append(np.full(n_cells, time))
    x = np.concatenate(blocks)
    obs = pd.DataFrame(
        {
            "drug": pd.Categorical.from_codes(
                np.concatenate(codes), categories=[task.control, *task.drugs]
            ),
            "time": np.concatenate(time_col),
        },
        index=pd.Index([f"cell{i}" for i in range(len(x))]),
    )
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=list(FEATURES)))
    adata.uns["fouri_like"] = {"seed": seed, "times": list(times)}
    adata.uns["modality"] = "protein"  # read by condmonge.data.anndata_io.detect_modality
    return FouriLikeTask(
        adata, task.hidden_embedding, task.smiles, task.drugs, times, task.control,
        task._maps, task._controls,
    )  # fmt: skip
