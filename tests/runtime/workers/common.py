"""Helpers shared by the runtime worker scripts (run in their own processes, see tests/launch.py).

Importing this module imports torch only; Megatron is imported inside the functions, after the
worker has called ``enable_cpu_megatron()`` (through ``sedd_megatron.runtime.world``).
"""

from __future__ import annotations

import json

import torch

from tests.launch import RESULT_PREFIX

HIDDEN = 32
HEADS = 4
SEQ = 8
BATCH = 2
VOCAB = 64


def start_worker() -> None:
    """One intra-op thread per process: with gloo's threads on 2 cores, more is 100x slower."""
    torch.set_num_threads(1)


def tiny_config(**overrides):
    """A 2-layer, hidden-32 TransformerConfig with exact-slice CPU init and no dropout."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    kwargs = dict(
        num_layers=2,
        hidden_size=HIDDEN,
        ffn_hidden_size=2 * HIDDEN,
        num_attention_heads=HEADS,
        use_cpu_initialization=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        gradient_accumulation_fusion=False,
    )
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def local_layer_spec():
    """Megatron's local (no TE/Apex) GPT layer spec with bidirectional attention."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.enums import AttnMaskType

    spec = get_gpt_layer_local_spec()
    spec.submodules.self_attention.params["attn_mask_type"] = AttnMaskType.no_mask
    return spec


def tiny_block(config):
    """A Megatron TransformerBlock built from the local spec."""
    from megatron.core.transformer.transformer_block import TransformerBlock

    return TransformerBlock(config, local_layer_spec())


def tiny_gpt(config):
    """A tiny GPTModel (local spec, bidirectional attention, untied output layer)."""
    from megatron.core.models.gpt import GPTModel

    return GPTModel(
        config=config,
        transformer_layer_spec=local_layer_spec(),
        vocab_size=VOCAB,
        max_sequence_length=SEQ,
        share_embeddings_and_output_weights=False,
    )


def report(**values) -> None:
    """Print one machine-readable line for the test to parse (rank 0 only)."""
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        print(RESULT_PREFIX + json.dumps(values), flush=True)
