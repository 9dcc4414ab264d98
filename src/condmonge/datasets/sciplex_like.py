"""A semi-synthetic data set shaped like sci-Plex3: real drugs, known optimal-transport maps.

Real molecules (SMILES) drive a hidden, smooth response model, so structure-based embeddings
can generalise to unseen drugs exactly as far as the chemistry allows, and the ground-truth
maps are known (gradients of convex functions: Brenier maps), so predictions of unseen drugs
can be scored with L2-UVP.

Generation, for drug ``d``, dose ``D`` and cell type ``c``:

1. ``z_d``: a fixed list of RDKit 2D descriptors (:data:`HIDDEN_DESCRIPTORS`, chosen to be stable
   across RDKit versions) of ``d``, z-scored over the drugs of the task and clipped to ``[-4, 4]``;
2. ``e_d = z_d R`` with a fixed random ``R`` (from ``seed``), each dimension rescaled to unit
   standard deviation over the drugs: the hidden embedding
   (:attr:`SciplexLikeTask.hidden_embedding`);
3. per cell type a fixed modulation ``e_{d,c} = g_c * e_d + h_c``;
4. the map ``T(x) = x + t * grad psi_{e_{d,c}}(x)`` of :class:`~condmonge.datasets.synthetic.
   ConvexTask` (``psi`` convex) with dose scale ``t = log10(1 + D) / 4``, applied to fresh draws
   of the heterogeneous (clustered, heavy-tailed) control population of cell type ``c``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import anndata as ad
import numpy as np
import pandas as pd
from rdkit import Chem
from rdkit.Chem import Descriptors
from rdkit.rdBase import BlockLogs

from condmonge.datasets.synthetic import ConvexTask, convex_task, sample_mixture
from condmonge.errors import ConfigError, DataError, UnknownConditionError, suggest

__all__ = ["HIDDEN_DESCRIPTORS", "SciplexLikeTask", "sciplex_like"]

#: RDKit descriptors behind the hidden response model (long-standing, version-stable ones).
HIDDEN_DESCRIPTORS = (
    "MolWt",
    "MolLogP",
    "MolMR",
    "TPSA",
    "NumHDonors",
    "NumHAcceptors",
    "NumRotatableBonds",
    "RingCount",
    "NumAromaticRings",
    "FractionCSP3",
    "HeavyAtomCount",
    "NumHeteroatoms",
    "BertzCT",
    "LabuteASA",
)

#: A few well-known drugs, used when no SMILES are given.
EXAMPLE_SMILES = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "caffeine": "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
    "ibuprofen": "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
    "paracetamol": "CC(=O)Nc1ccc(O)cc1",
    "naproxen": "COc1ccc2cc(ccc2c1)C(C)C(=O)O",
    "metformin": "CN(C)C(=N)N=C(N)N",
    "imatinib": "Cc1ccc(NC(=O)c2ccc(CN3CCN(C)CC3)cc2)cc1Nc1nccc(-c2cccnc2)n1",
    "temozolomide": "Cn1nnc2c(C(N)=O)ncn2c1=O",
    "vorinostat": "ONC(=O)CCCCCCC(=O)Nc1ccccc1",
    "dexamethasone": "CC1CC2C3CCC4=CC(=O)C=CC4(C)C3(F)C(O)CC2(C)C1(O)C(=O)CO",
}


@dataclass(frozen=True)
class SciplexLikeTask:
    """A sci-Plex-shaped task with known maps.

    Attributes:
      adata: controls and treated cells; ``obs['condition']`` (a drug or ``control``),
        ``obs['dose']`` (0 for controls), ``obs['cell_type']``.
      hidden_embedding: the hidden embedding ``e_d`` of each drug (index = drug): the response
        model's truth, not something a model should be given.
      smiles: the SMILES of each drug.
      drugs, doses, cell_types: what the data cover; control: the label of control cells.
    """

    adata: ad.AnnData
    hidden_embedding: pd.DataFrame
    smiles: pd.Series
    drugs: list[str]
    doses: tuple[float, ...]
    cell_types: tuple[str, ...]
    control: str
    _maps: ConvexTask = field(repr=False)
    _modulation: dict[str, tuple[np.ndarray, np.ndarray]] = field(repr=False)
    _controls: dict[str, dict[str, np.ndarray]] = field(repr=False)

    @staticmethod
    def dose_scale(dose: float) -> float:
        """``t = log10(1 + dose) / 4`` (1 at 10,000)."""
        if not math.isfinite(dose) or dose < 0:
            raise ConfigError(f"dose must be a finite number >= 0, got {dose!r}")
        return math.log10(1.0 + float(dose)) / 4.0

    def _check_cell_type(self, cell_type: str) -> None:
        if cell_type not in self._modulation:
            raise UnknownConditionError(
                f"cell type '{cell_type}' is not in this task{suggest(cell_type, self.cell_types)}"
            )

    def embedding(self, drug: str, cell_type: str) -> np.ndarray:
        """The modulated embedding ``e_{d,c}`` that parameterises the map.

        Args:
          drug: a drug of the task; cell_type: one of its cell types.

        Returns:
          ``[hidden_dim]`` float64.
        """
        self._check_cell_type(cell_type)
        if drug not in self.hidden_embedding.index:
            raise UnknownConditionError(
                f"drug '{drug}' is not in this task{suggest(drug, self.drugs)}"
            )
        gain, offset = self._modulation[cell_type]
        return self.hidden_embedding.loc[drug].to_numpy(np.float64) * gain + offset

    def _gradient(self, drug: str, cell_type: str, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        return self._maps.map_embedding(self.embedding(drug, cell_type), x) - x

    def true_map(self, drug: str, dose: float, cell_type: str, x: np.ndarray) -> np.ndarray:
        """Ground-truth map of ``drug`` at ``dose`` in ``cell_type`` applied to ``x [n, d]``.

        The control label and ``dose == 0`` give the identity (float64 output).

        Args:
          drug: a drug (or the control label); dose: its dose (nM); cell_type: a cell type.
          x: ``[n, d]`` cells.
        """
        t = self.dose_scale(dose)
        self._check_cell_type(cell_type)
        x = np.array(x, np.float64)
        if drug == self.control or t == 0.0:
            return x
        return x + t * self._gradient(drug, cell_type, x)

    def sample_controls(self, cell_type: str, n: int, seed: int = 0) -> np.ndarray:
        """``n`` fresh control cells ``[n, d]`` (float32) of ``cell_type``.

        Args:
          cell_type: a cell type of the task.
          n: number of cells.
          seed: seed of the draws.
        """
        self._check_cell_type(cell_type)
        return sample_mixture(np.random.default_rng(seed), self._controls[cell_type], n)


def _hidden_inputs(smiles: pd.Series) -> np.ndarray:
    functions = dict(Descriptors.descList)
    rows = []
    with BlockLogs():
        for drug, smi in smiles.items():
            mol = Chem.MolFromSmiles(str(smi)) if isinstance(smi, str) and smi.strip() else None
            if mol is None or mol.GetNumAtoms() == 0:
                raise DataError(f"drug '{drug}' has a missing or invalid SMILES '{smi}'")
            rows.append([float(functions[name](mol)) for name in HIDDEN_DESCRIPTORS])
    return np.asarray(rows, np.float64)


def sciplex_like(  # noqa: PLR0913  a generator's design knobs are its parameters
    smiles: pd.Series | None = None,
    n_drugs: int | None = None,
    doses: Sequence[float] = (10, 100, 1000, 10000),
    cell_types: Sequence[str] = ("A549", "K562", "MCF7"),
    n_cells: int = 100,
    n_features: int = 50,
    n_controls: int | None = None,
    hidden_dim: int = 6,
    control: str = "control",
    seed: int = 0,
) -> SciplexLikeTask:
    """Build a :class:`SciplexLikeTask`.

    Args:
      smiles: SMILES indexed by drug name (e.g. ``read_smiles_table`` of the sci-Plex table);
        ``None`` uses :data:`EXAMPLE_SMILES`. An entry named ``control`` (the vehicle) is
        dropped.
      n_drugs: keep the first ``n_drugs`` drugs (in table order); ``None`` keeps all.
      doses: doses (nM) of every drug; cell_types: cell lines, each with its own controls.
      n_cells: treated cells per (drug, dose, cell type).
      n_features: dimension ``d`` of the cells.
      n_controls: control cells per cell type (default ``n_cells * len(doses)``).
      hidden_dim: dimension of the hidden embedding.
      control: the label of control cells.
      seed: the same seed (and SMILES) gives the same task.

    Returns:
      The task; its ``adata`` holds ``len(cell_types) * (n_controls + drugs * doses * n_cells)``
      cells ``[N, n_features]``.
    """
    series = _drug_table(smiles, n_drugs, control)
    doses, cell_types = tuple(float(d) for d in doses), tuple(str(c) for c in cell_types)
    n_controls = n_cells * len(doses) if n_controls is None else n_controls
    _check_design(doses, cell_types, n_cells, n_features, hidden_dim, n_controls)
    rng = np.random.default_rng(seed)
    maps = convex_task(
        n_conditions=1, n_features=n_features, n_cells=1, embedding_dim=hidden_dim,
        n_unseen=0, seed=int(rng.integers(2**31)),
    )  # fmt: skip
    hidden_table = hidden_embedding(series, rng, hidden_dim)
    modulation, controls = _cell_type_models(rng, cell_types, n_features, hidden_dim)
    task = SciplexLikeTask(
        ad.AnnData(np.zeros((0, n_features), np.float32)), hidden_table,
        series.rename("smiles"), list(hidden_table.index), doses, cell_types, control, maps,
        modulation, controls,
    )  # fmt: skip
    adata = _cells(task, rng, n_cells, n_controls)
    adata.uns["sciplex_like"] = {
        "seed": seed,
        "doses": list(doses),
        "cell_types": list(cell_types),
        "hidden_descriptors": list(HIDDEN_DESCRIPTORS),
    }
    return replace(task, adata=adata)


def _check_design(
    doses: tuple[float, ...],
    cell_types: tuple[str, ...],
    n_cells: int,
    n_features: int,
    hidden_dim: int,
    n_controls: int,
) -> None:
    """Raise :class:`ConfigError` on an impossible design (arguments of :func:`sciplex_like`)."""
    if not doses or not all(math.isfinite(d) and d >= 0 for d in doses):
        raise ConfigError(f"doses must be a non-empty list of numbers >= 0, got {doses}")
    if not cell_types or len(set(cell_types)) != len(cell_types):
        raise ConfigError(f"cell_types must be distinct and non-empty, got {cell_types}")
    if n_cells < 1 or n_features < 1 or hidden_dim < 1:
        raise ConfigError("n_cells, n_features and hidden_dim must be >= 1")
    if n_controls < 1:
        raise ConfigError(f"n_controls must be >= 1, got {n_controls}")


def _drug_table(smiles: pd.Series | None, n_drugs: int | None, control: str) -> pd.Series:
    """The SMILES of the task's drugs (the control dropped, the first ``n_drugs`` kept)."""
    series = pd.Series(EXAMPLE_SMILES) if smiles is None else pd.Series(smiles).copy()
    series.index = series.index.astype(str)
    series = series.drop(index=control, errors="ignore")
    if series.index.has_duplicates:
        raise DataError(f"drug '{series.index[series.index.duplicated()][0]}' is listed twice")
    if n_drugs is not None:
        if not 1 <= n_drugs <= len(series):
            raise ConfigError(f"n_drugs must be in [1, {len(series)}], got {n_drugs}")
        series = series.iloc[:n_drugs]
    if len(series) < 2:
        raise ConfigError("sciplex_like needs at least 2 drugs")
    return series


def hidden_embedding(
    series: pd.Series, rng: np.random.Generator, hidden_dim: int, index_name: str = "condition"
) -> pd.DataFrame:
    """Steps 1-2 of the module docstring: the ``[drugs, hidden_dim]`` table ``e_d``.

    Args:
      series: SMILES indexed by drug name.
      rng: draws the random projection of the z-scored descriptors.
      hidden_dim: columns of the table.
      index_name: name of the table's index.
    """
    inputs = _hidden_inputs(series)
    std = inputs.std(axis=0)
    z = np.clip((inputs - inputs.mean(axis=0)) / np.where(std > 1e-12, std, 1.0), -4.0, 4.0)
    projection = rng.normal(size=(len(HIDDEN_DESCRIPTORS), hidden_dim))
    hidden = z @ projection
    hidden_std = hidden.std(axis=0)
    hidden = hidden / np.where(hidden_std > 1e-12, hidden_std, 1.0)
    return pd.DataFrame(
        hidden,
        index=pd.Index([str(d) for d in series.index], name=index_name),
        columns=[f"hidden_{j}" for j in range(hidden_dim)],
    )


def _cell_type_models(
    rng: np.random.Generator, cell_types: tuple[str, ...], n_features: int, hidden_dim: int
):
    """Per cell type: the modulation ``(g_c, h_c)`` and the control mixture's parameters."""
    base_centres = rng.normal(scale=2.0, size=(4, n_features))
    modulation, controls = {}, {}
    for cell_type in cell_types:
        modulation[cell_type] = (
            rng.uniform(0.6, 1.4, size=hidden_dim),
            rng.normal(scale=0.3, size=hidden_dim),
        )
        n_clusters = 3
        controls[cell_type] = {
            "centres": base_centres[rng.choice(4, n_clusters, replace=False)]
            + rng.normal(scale=1.0, size=(n_clusters, n_features)),
            "spreads": rng.uniform(0.3, 1.0, size=(n_clusters, n_features)),
            "weights": rng.dirichlet(np.full(n_clusters, 2.0)),
        }
    return modulation, controls


def _cells(
    task: SciplexLikeTask, rng: np.random.Generator, n_cells: int, n_controls: int
) -> ad.AnnData:
    """Controls and treated cells of every (cell type, drug, dose), each from fresh draws."""
    doses, drugs, cell_types = task.doses, task.drugs, task.cell_types
    scales = np.repeat([task.dose_scale(d) for d in doses], n_cells)[:, None]
    n_block = n_cells * len(doses)
    blocks, cond_codes, dose_col, type_codes = [], [], [], []
    for t_index, cell_type in enumerate(cell_types):
        blocks.append(sample_mixture(rng, task._controls[cell_type], n_controls))
        cond_codes.append(np.zeros(n_controls, np.int32))
        dose_col.append(np.zeros(n_controls))
        type_codes.append(np.full(n_controls, t_index, np.int32))
        for d_index, drug in enumerate(drugs):
            fresh = sample_mixture(rng, task._controls[cell_type], n_block).astype(np.float64)
            blocks.append(
                (fresh + scales * task._gradient(drug, cell_type, fresh)).astype(np.float32)
            )
            cond_codes.append(np.full(n_block, d_index + 1, np.int32))
            dose_col.append(np.repeat(doses, n_cells))
            type_codes.append(np.full(n_block, t_index, np.int32))
    x = np.concatenate(blocks)
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical.from_codes(
                np.concatenate(cond_codes), categories=[task.control, *drugs]
            ),
            "dose": np.concatenate(dose_col),
            "cell_type": pd.Categorical.from_codes(
                np.concatenate(type_codes), categories=list(cell_types)
            ),
        },
        index=pd.Index([f"cell{i}" for i in range(len(x))]),
    )
    var = pd.DataFrame(index=[f"f{j}" for j in range(x.shape[1])])
    return ad.AnnData(X=x, obs=obs, var=var)
