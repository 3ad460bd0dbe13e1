"""Training SEDD with megatron.training.pretrain: arguments, forward step, hooks (which update
the EMA weights of sedd_megatron.models.sedd.ema)."""
