"""Pretrain a SEDD (score entropy discrete diffusion) language model with Megatron-Core.

    torchrun --nproc_per_node=8 pretrain_sedd.py --config configs/sedd_small_absorb.yaml \
        --data-path /data/corpus_text_document --save ckpt/ --load ckpt/

All of Megatron's flags apply (see ``--help``), plus the SEDD group (``--sedd-*``, ``--ema-decay``).
"""

from sedd_megatron.console import exit_on_interrupt

exit_on_interrupt()  # Ctrl-C from here on: one line, exit status 130

from sedd_megatron.training.pretrain import main  # noqa: E402

if __name__ == "__main__":
    main()
