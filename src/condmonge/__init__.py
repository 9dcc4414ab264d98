"""condmonge: conditional optimal-transport maps for single-cell perturbation responses.

One neural map ``T(x, c) = x + f([x, h(c)])`` is trained for many conditions at once with the
Conditional Monge Gap (Harsanyi et al. 2025) and predicts responses to seen and unseen
conditions (drugs, doses, combinations, cell types).
"""

from condmonge import datasets, errors
from condmonge._version import __version__
from condmonge.conditions.spec import Condition
from condmonge.config import Config, DataConfig, LossConfig, ModelConfig, TrainConfig, load_config
from condmonge.model import ConditionalMonge

__all__ = [
    "Condition",
    "ConditionalMonge",
    "Config",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "TrainConfig",
    "__version__",
    "datasets",
    "errors",
    "load_config",
]
