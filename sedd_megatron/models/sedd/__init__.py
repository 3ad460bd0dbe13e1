"""The SEDD model type on Megatron-Core: config, layer spec, model, state-dict adapter, EMA."""

from sedd_megatron.models.sedd.sedd_config import SEDDTransformerConfig
from sedd_megatron.models.sedd.sedd_layer_specs import get_sedd_layer_spec
from sedd_megatron.models.sedd.sedd_model import SEDDModel, padded_vocab_size

__all__ = ["SEDDModel", "SEDDTransformerConfig", "get_sedd_layer_spec", "padded_vocab_size"]
