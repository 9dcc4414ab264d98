"""Conditions and their encoders."""

from condmonge.conditions.encoders import (
    FeatureEncoder,
    OneHotEncoder,
    TableEncoder,
    encoder_from_state,
    read_table,
)
from condmonge.conditions.encoding import ConditionEncoder, EncodedConditions
from condmonge.conditions.spec import Condition, log_dose, parse_doses, parse_perturbations

__all__ = [
    "Condition",
    "ConditionEncoder",
    "EncodedConditions",
    "FeatureEncoder",
    "OneHotEncoder",
    "TableEncoder",
    "encoder_from_state",
    "log_dose",
    "parse_doses",
    "parse_perturbations",
    "read_table",
]
