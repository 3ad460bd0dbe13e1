"""SEDD in plain PyTorch (no Megatron): config, state-dict layout, model, checkpoint IO."""

from sedd_megatron.errors import CheckpointError, ConfigError

from .checkpoint import load_pretrained, read_state_dict, save_pretrained
from .config import SEDDConfig
from .layout import check_state_dict, expected_shapes, reference_keys
from .model import SEDD

__all__ = [
    "SEDD",
    "SEDDConfig",
    "ConfigError",
    "CheckpointError",
    "check_state_dict",
    "expected_shapes",
    "reference_keys",
    "load_pretrained",
    "read_state_dict",
    "save_pretrained",
]
