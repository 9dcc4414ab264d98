"""Package and checkpoint format versions."""

__version__ = "0.1.0"
# Bump when a checkpoint written by this version cannot be read by the previous loader.
CHECKPOINT_FORMAT = "condmonge-checkpoint"
CHECKPOINT_VERSION = 1
