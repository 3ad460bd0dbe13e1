"""SEDD (Score Entropy Discrete Diffusion, Lou, Meng & Ermon, ICML 2024) on NVIDIA Megatron-Core.

Importing this package has no side effects: it neither imports Megatron nor patches torch.
Layers, bottom to top: ``diffusion`` (pure PyTorch math) <- ``models`` <- training, sampling,
evaluation and checkpoint code <- ``tools/`` and ``pretrain_sedd.py``. ``runtime`` holds the
opt-in patches that let Megatron-Core run on CPU over gloo and fixes for upstream bugs.
"""

__version__ = "0.1.0"
