"""Megatron-Core models of this package (import requires megatron-core)."""
