"""Training SEDD with megatron.training.pretrain: arguments, EMA, forward step, hooks."""
