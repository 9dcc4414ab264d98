"""Conditions and their encoders."""

from condmonge.conditions.effect import effect_embedding, infer_effect_embedding
from condmonge.conditions.encoders import (
    FeatureEncoder,
    OneHotEncoder,
    TableEncoder,
    encoder_from_state,
    read_table,
)
from condmonge.conditions.encoding import ConditionEncoder, EncodedConditions
from condmonge.conditions.smiles import (
    SmilesSpec,
    parse_smiles_spec,
    read_smiles_table,
    reduce_embedding,
    smiles_embedding,
    smiles_features,
)
from condmonge.conditions.spec import Condition, log_dose, parse_doses, parse_perturbations

__all__ = [
    "Condition",
    "ConditionEncoder",
    "EncodedConditions",
    "FeatureEncoder",
    "OneHotEncoder",
    "SmilesSpec",
    "TableEncoder",
    "effect_embedding",
    "encoder_from_state",
    "infer_effect_embedding",
    "log_dose",
    "parse_smiles_spec",
    "parse_doses",
    "parse_perturbations",
    "read_smiles_table",
    "read_table",
    "reduce_embedding",
    "smiles_embedding",
    "smiles_features",
]
