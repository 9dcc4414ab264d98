"""condmonge: conditional optimal-transport maps for single-cell perturbation responses.

One neural map ``T(x, c) = x + f([x, h(c)])`` is trained for many conditions at once with the
Conditional Monge Gap (Harsanyi et al. 2025) and predicts responses to seen and unseen
conditions (drugs, doses, combinations, cell types).

On a multi-core CPU call :func:`use_cpu_cores` before any JAX array exists (the command line
does): each step's conditions are then split over one JAX device per core.

The public names are imported on first use (PEP 562 module ``__getattr__``): ``import
condmonge`` and the command line's ``--help`` and ``--version`` do not load JAX; the first
access to, e.g., ``condmonge.ConditionalMonge`` does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from condmonge._version import __version__

if TYPE_CHECKING:  # what static analysers and IDEs see; at run time see `__getattr__`
    from condmonge import datasets, errors
    from condmonge.config import (
        Config,
        DataConfig,
        LossConfig,
        ModelConfig,
        TrainConfig,
        load_config,
    )
    from condmonge.data.spec import Condition, ConditionSpec
    from condmonge.model import ConditionalMonge
    from condmonge.train.sharding import use_cpu_cores

# public name -> module that defines it (a module name alone for subpackages)
_LAZY = {
    "Condition": "condmonge.data.spec",
    "ConditionSpec": "condmonge.data.spec",
    "ConditionalMonge": "condmonge.model",
    "Config": "condmonge.config",
    "DataConfig": "condmonge.config",
    "LossConfig": "condmonge.config",
    "ModelConfig": "condmonge.config",
    "TrainConfig": "condmonge.config",
    "load_config": "condmonge.config",
    "use_cpu_cores": "condmonge.train.sharding",
    "datasets": "condmonge.datasets",
    "errors": "condmonge.errors",
}

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


def __getattr__(name: str) -> Any:
    """Import the module defining ``name`` on first access and cache the value (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'condmonge' has no attribute '{name}'")
    module = importlib.import_module(_LAZY[name])
    value = module if module.__name__ == f"condmonge.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
