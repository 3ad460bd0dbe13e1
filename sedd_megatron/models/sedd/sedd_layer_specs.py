"""Layer specs for SEDD: one function, local (Megatron-Core) and Transformer Engine backends.

The local spec is the tested default and the one used on CPU. The TE spec swaps in TE's parallel
linears and fused attention (which carry FP8 through Megatron's TE integration); it is chosen
automatically when Transformer Engine imports. Norms and adaLN stay ours in both: SEDD's norm has
no bias and must be modulated between the norm and the next linear, so TE's fused
LayerNorm-Linear cannot be used; our fused kernels (LayerNorm + modulation, bias + GELU, gated
residual) work on the tensors TE's linears return (with ``skip_bias_add``) as on the local ones.
"""

import copy
from functools import partial

from megatron.core.extensions.transformer_engine import HAVE_TE
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayerSubmodules

from sedd_megatron.models.sedd.sedd_layers import (
    SEDDMLP,
    BidirectionalAttention,
    SEDDHeadNorm,
    SEDDLayerNorm,
    SEDDTransformerLayer,
)


def build_biased_mlp(*, submodules: MLPSubmodules, config, **kwargs) -> SEDDMLP:
    """The reference MLP has biases while qkv and the attention output do not.

    Megatron's ``add_bias_linear`` is global, so the MLP is built from a copy of the config with
    biases switched on (the copy skips re-validation; only this flag differs).
    """
    mlp_config = copy.copy(config)
    mlp_config.add_bias_linear = True
    return SEDDMLP.as_mlp_submodule(submodules=submodules, config=mlp_config, **kwargs)


def get_sedd_layer_spec(
    use_transformer_engine: bool = False, qk_layernorm: bool = False
) -> ModuleSpec:
    """ModuleSpec of one SEDD (DDiT) transformer layer.

    Args:
        use_transformer_engine: True for TE layers, False (the default) for local Megatron-Core
            layers. The TE spec is opt-in until a GPU run has checked it against the local one.
        qk_layernorm: a norm on each query and key head (``SEDDHeadNorm``); must match the
            config's ``qk_layernorm`` (Megatron checks).
    """
    head_norm = SEDDHeadNorm if qk_layernorm else IdentityOp
    if use_transformer_engine:
        if not HAVE_TE:
            raise RuntimeError("the Transformer Engine layer spec needs transformer_engine")
        from megatron.core.extensions.transformer_engine import (
            TEColumnParallelLinear,
            TEDotProductAttention,
            TERowParallelLinear,
        )

        column, row, core_attention = (
            TEColumnParallelLinear,
            TERowParallelLinear,
            TEDotProductAttention,
        )
    else:
        column, row, core_attention = (
            ColumnParallelLinear,
            RowParallelLinear,
            BidirectionalAttention,
        )

    return ModuleSpec(
        module=SEDDTransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=SEDDLayerNorm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.no_mask},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=column,
                    core_attention=core_attention,
                    linear_proj=row,
                    q_layernorm=head_norm,
                    k_layernorm=head_norm,
                ),
            ),
            pre_mlp_layernorm=SEDDLayerNorm,
            mlp=partial(
                build_biased_mlp, submodules=MLPSubmodules(linear_fc1=column, linear_fc2=row)
            ),
        ),
    )
