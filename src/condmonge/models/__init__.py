"""Networks and losses."""

from condmonge.models.losses import (
    cost_fn_from_name,
    make_conditional_loss,
    monge_gap,
    sinkhorn_divergence,
)
from condmonge.models.networks import (
    ConditionalResidualMap,
    ConditionEmbedding,
    PerturbationSetEncoder,
)

__all__ = [
    "ConditionEmbedding",
    "ConditionalResidualMap",
    "PerturbationSetEncoder",
    "cost_fn_from_name",
    "make_conditional_loss",
    "monge_gap",
    "sinkhorn_divergence",
]
