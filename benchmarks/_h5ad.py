"""Writing a sparse ``.h5ad`` larger than memory, block by block (benchmark plumbing)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import anndata as ad
import h5py
import pandas as pd
import scipy.sparse as sp
from anndata.io import sparse_dataset, write_elem

__all__ = ["write_sparse_h5ad"]


def write_sparse_h5ad(
    path: Path, obs: pd.DataFrame, var: pd.DataFrame, blocks: Iterable[sp.csr_matrix]
) -> int:
    """Write an AnnData whose CSR ``X`` is the row blocks ``blocks``, in order; return its nnz.

    Only one block is in memory at a time: the first creates ``X`` and the others are appended
    to it on disk. ``obs`` must have as many rows as the blocks together.
    """
    nnz = 0
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        write_elem(f, "obs", obs)
        write_elem(f, "var", var)
        for name in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, name, {})
        for i, block in enumerate(blocks):
            nnz += block.nnz
            if i == 0:
                write_elem(f, "X", block)
            else:
                sparse_dataset(f["X"]).append(block)
    assert ad  # imported for its side effect of registering the writers
    return nnz
