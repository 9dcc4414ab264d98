"""condmonge: conditional optimal-transport maps for single-cell perturbation responses.

One neural map ``T(x, c) = x + f([x, h(c)])`` is trained for many conditions at once with the
Conditional Monge Gap (Harsanyi et al. 2025) and predicts responses to seen and unseen
conditions (drugs, doses, combinations, cell types).

On a multi-core CPU call :func:`use_cpu_cores` before any JAX array exists (the command line
does): each step's conditions are then split over one JAX device per core.
"""

from condmonge import datasets, errors
from condmonge._version import __version__
from condmonge.config import Config, DataConfig, LossConfig, ModelConfig, TrainConfig, load_config
from condmonge.data.spec import Condition, ConditionSpec
from condmonge.model import ConditionalMonge
from condmonge.train.sharding import use_cpu_cores

__all__ = [
    "Condition",
    "ConditionSpec",
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
    "use_cpu_cores",
]
