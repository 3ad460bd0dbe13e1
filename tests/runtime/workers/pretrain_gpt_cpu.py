"""Worker: ``megatron.training.pretrain()`` of a tiny GPT on CPU with mock data.

Follows Megatron-LM's ``pretrain_gpt.py`` pattern (model provider, dataset provider, forward
step) with Megatron's own argument parser; every command-line argument is Megatron's. Run it
with ``python`` (one process, with torchrun's environment variables set) or torchrun. At the
end it reports the exact training losses of its micro-batches (Megatron's log rounds them).
"""

import json
from functools import partial

import torch

from tests.launch import RESULT_PREFIX

TRAIN_LOSSES: list[float] = []


def model_provider(
    pre_process=True, post_process=True, vp_stage=None, config=None, pg_collection=None
):
    """A GPTModel from the parsed arguments, on Megatron's local (no TE/Apex) layer spec."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.training import get_args
    from megatron.training.argument_utils import core_transformer_config_from_args

    args = get_args()
    return GPTModel(
        config=config or core_transformer_config_from_args(args),
        transformer_layer_spec=get_gpt_layer_local_spec(),
        vocab_size=args.padded_vocab_size,
        max_sequence_length=args.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        position_embedding_type=args.position_embedding_type,
        vp_stage=vp_stage,
        pg_collection=pg_collection,
    )


def datasets_provider(train_val_test_num_samples, vp_stage=None):
    """Megatron's MockGPTDataset splits, built on every rank (deterministic, so TP ranks agree;
    that spares the TP broadcast of Megatron-LM's ``get_batch``)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig, MockGPTDataset
    from megatron.core.tokenizers.utils.build_tokenizer import build_tokenizer
    from megatron.training import get_args

    args = get_args()
    config = GPTDatasetConfig(
        random_seed=args.seed,
        sequence_length=args.seq_length,
        split=args.split,
        tokenizer=build_tokenizer(args),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
    )

    return BlendedMegatronDatasetBuilder(
        MockGPTDataset, train_val_test_num_samples, lambda: True, config
    ).build()


def loss_func(loss_mask, training, output_tensor):
    losses = output_tensor.view(-1).float()
    loss_mask = loss_mask.view(-1).float()
    loss = torch.sum(losses * loss_mask)
    num_tokens = loss_mask.sum().clone().detach().to(torch.int)
    if training:
        TRAIN_LOSSES.append((loss / num_tokens).item())
    return loss, num_tokens, {"lm loss": torch.cat([loss.detach().view(1), num_tokens.view(1)])}


def forward_step(data_iterator, model):
    batch = next(data_iterator)
    output = model(
        batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"]
    )
    return output, partial(loss_func, batch["loss_mask"], model.training)


def main():
    torch.set_num_threads(1)
    from sedd_megatron.runtime import apply_upstream_fixes, enable_cpu_megatron

    assert enable_cpu_megatron()
    apply_upstream_fixes()

    from megatron.core.enums import ModelType
    from megatron.training import pretrain
    from megatron.training.argument_utils import pretrain_cfg_container_from_args
    from megatron.training.arguments import parse_and_validate_args

    args = parse_and_validate_args()
    datasets_provider.is_distributed = True
    pretrain(
        pretrain_cfg_container_from_args(args),
        datasets_provider,
        ModelType.encoder_or_decoder,
        forward_step,
        model_provider=model_provider,
    )
    if torch.distributed.get_rank() == 0:
        print(RESULT_PREFIX + json.dumps({"train_losses": TRAIN_LOSSES}), flush=True)


if __name__ == "__main__":
    main()
