"""Each input check raises a one-line error that names the fix."""

import numpy as np
import pytest

import condmonge as cm
from condmonge.config import DataConfig, load_config
from condmonge.data.anndata_io import align_features, validate_adata
from condmonge.errors import ConfigError, DataError, UnknownConditionError
from conftest import make_adata, tiny_config


def _one_line(exc_info):
    assert "\n" not in str(exc_info.value)
    return str(exc_info.value)


def test_missing_condition_column_suggests_closest(adata):
    with pytest.raises(DataError) as exc:
        validate_adata(adata, DataConfig(condition_key="conditon"))
    msg = _one_line(exc)
    assert "adata.obs has no column 'conditon'" in msg and "did you mean 'condition'" in msg


def test_missing_optional_columns_are_named(adata):
    with pytest.raises(DataError, match="no column 'dose'.*dose_key"):
        validate_adata(adata, DataConfig(dose_key="dose"))
    with pytest.raises(DataError, match="no column 'celltype'.*cell_type_key"):
        validate_adata(adata, DataConfig(cell_type_key="celltype"))


def test_absent_control_label(adata):
    with pytest.raises(DataError) as exc:
        validate_adata(adata, DataConfig(control="ctrl"))
    assert "control label 'ctrl' not found in adata.obs['condition']" in _one_line(exc)


def test_only_controls(adata):
    only = adata[adata.obs.condition == "control"].copy()
    with pytest.raises(DataError, match="holds only control cells"):
        validate_adata(only, DataConfig())


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values(adata, bad):
    adata.X[3, 2] = bad
    with pytest.raises(DataError) as exc:
        validate_adata(adata, DataConfig())
    assert "adata.X contains NaN or inf in 1 cells (first at row 3)" in _one_line(exc)


def test_non_finite_values_in_sparse_x():
    sparse = make_adata(sparse=True)
    sparse.X.data[0] = np.nan
    with pytest.raises(DataError, match="NaN or inf"):
        validate_adata(sparse, DataConfig())


def test_duplicate_genes(adata):
    adata.var_names = ["g0", "g0", "g2", "g3", "g4", "g5"]
    with pytest.raises(DataError, match="var_names_make_unique"):
        validate_adata(adata, DataConfig())


def test_missing_labels(adata):
    adata.obs["condition"] = adata.obs["condition"].astype(object)
    adata.obs.iloc[0, 0] = None
    with pytest.raises(DataError, match="1 missing values"):
        validate_adata(adata, DataConfig())


def test_query_genes_missing_or_reordered(adata):
    names = list(adata.var_names)
    with pytest.raises(DataError) as exc:
        align_features(adata[:, :4], names, None)
    assert "2 of the model's 6 genes are missing from adata.var_names (g4, g5)" in _one_line(exc)
    reordered = adata[:, names[::-1]]
    np.testing.assert_array_equal(align_features(reordered, names, None), adata.X)


def test_config_unknown_and_ill_typed_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepz: 10\n")
    with pytest.raises(ConfigError, match="unknown key 'train.stepz'"):
        load_config(bad)
    bad.write_text("train:\n  steps: many\n")
    with pytest.raises(ConfigError, match="'train.steps'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="unknown config key 'model.widht'"):
        cm.Config().updated({"model.widht": 3})


@pytest.fixture(scope="module")
def fitted():
    data = make_adata(cell_types=["k1", "k2"])
    data = data[~((data.obs.cell_type == "k2") & (data.obs.condition == "A+B"))].copy()
    model = cm.ConditionalMonge(tiny_config()).fit(
        data, "condition", "control", cell_type_key="cell_type", holdout=["A+B"]
    )
    return model, data


def test_holdout_not_in_data():
    with pytest.raises(UnknownConditionError, match="'ZZZ' do not occur in the data"):
        cm.ConditionalMonge(tiny_config()).fit(
            make_adata(), "condition", "control", holdout=["ZZZ"]
        )


def test_unknown_perturbation_at_predict(fitted):
    model, data = fitted
    with pytest.raises(UnknownConditionError) as exc:
        model.predict(data, ["A+C"])
    assert "perturbation 'C' was not seen in training" in _one_line(exc)
    assert "embedding table" in str(exc.value)


def test_cell_type_without_controls_at_predict(fitted):
    model, data = fitted
    only_k1 = data[data.obs.cell_type == "k1"]
    with pytest.raises(DataError, match="no control cells of cell type 'k2'"):
        model.predict(only_k1, ["A"], cell_type="k2")


def test_predict_before_fit():
    with pytest.raises(cm.errors.NotFittedError, match="call `fit`"):
        cm.ConditionalMonge().predict(make_adata(), ["A"])
