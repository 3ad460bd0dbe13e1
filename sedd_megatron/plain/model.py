"""The SEDD score network (a DiT-style bidirectional transformer) in plain PyTorch.

Module and parameter names follow the reference implementation exactly (see layout.py), so state
dicts move between the two with strict key checking. Math: docs/math.md §8.
"""

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from sedd_megatron.diffusion.noise import score_log_expm1

from .checkpoint import load_pretrained, save_pretrained
from .config import SEDDConfig
from .layout import TIMESTEP_FREQ_DIM, rotary_inv_freq


class LayerNorm(nn.Module):
    """LayerNorm (no bias; the reference) or RMSNorm in float32, times a weight.

    The result stays float32 (as the reference's), so the modulation that follows is float32.
    """

    def __init__(self, dim: int, kind: str = "layernorm", eps: float = 1e-5):
        super().__init__()
        self.dim = dim
        self.kind = kind
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            if self.kind == "rmsnorm":
                x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
            else:
                x = F.layer_norm(x, [self.dim], eps=self.eps)
        return x * self.weight


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


def gated_residual(branch, gate, residual, p: float, training: bool):
    """residual + gate * dropout(branch)."""
    return residual + gate * F.dropout(branch, p=p, training=training)


class EmbeddingLayer(nn.Module):
    def __init__(self, hidden_size: int, vocab_rows: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_rows, hidden_size))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, indices):
        return self.embedding[indices]


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of sigma ([cos | sin], max period 10000) followed by an MLP."""

    def __init__(self, cond_dim: int, freq_dim: int = TIMESTEP_FREQ_DIM):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim)
        )

    @staticmethod
    def sinusoidal_features(sigma, dim: int, max_period: float = 10000.0):
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period)
            * torch.arange(half, dtype=torch.float32, device=sigma.device)
            / half
        )
        args = sigma[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, sigma):
        return self.mlp(self.sinusoidal_features(sigma, self.freq_dim))


class ConstantConditioning(nn.Module):
    """The conditioning vector c of a time-independent model: a learned constant ``cond``.

    Ones at init: the adaLN projections start at zero, and a zero c would leave both without a
    gradient. forward(batch) -> c (batch, cond_dim), used as is (no SiLU).
    """

    def __init__(self, cond_dim: int):
        super().__init__()
        self.cond = nn.Parameter(torch.ones(cond_dim))

    def forward(self, batch: int):
        return self.cond[None].expand(batch, -1)


class Rotary(nn.Module):
    """Rotary embedding (base 10000 in the reference), full head dim, rotate-half style."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        self.register_buffer("inv_freq", rotary_inv_freq(head_dim, base))

    def forward(self, seq_len: int):
        """cos, sin of shape (1, seq_len, 1, head_dim), float32."""
        positions = torch.arange(seq_len, device=self.inv_freq.device, dtype=self.inv_freq.dtype)
        angles = torch.outer(positions, self.inv_freq)
        angles = torch.cat([angles, angles], dim=-1)[None, :, None, :]
        return angles.cos(), angles.sin()


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x, cos, sin):
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


class SwiGLU(nn.Module):
    """silu(gate) * up for fc1's output rows [gate | up]."""

    def forward(self, h):
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up


class DDiTBlock(nn.Module):
    """adaLN-modulated pre-norm attention and MLP with gated residuals (docs/math.md §8).

    The reference block, or with ``config``'s backbone options: RMSNorm, grouped-query attention
    (``n_kv_heads``; query head j uses key/value head j // (n_heads / n_kv_heads)), a QK norm on
    each head before rotary, any head dim and MLP width, a SwiGLU MLP.
    """

    def __init__(self, config: SEDDConfig):
        super().__init__()
        H, d, F_ = config.hidden_size, config.head_dim, config.ffn_width
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.kv_heads, d
        self.dropout = config.dropout
        self.norm1 = LayerNorm(H, config.norm, config.norm_eps)
        self.attn_qkv = nn.Linear(H, (config.n_heads + 2 * config.kv_heads) * d, bias=False)
        if config.qk_norm:
            self.attn_q_norm = LayerNorm(d, config.norm, config.norm_eps)
            self.attn_k_norm = LayerNorm(d, config.norm, config.norm_eps)
        self.attn_out = nn.Linear(config.n_heads * d, H, bias=False)
        self.norm2 = LayerNorm(H, config.norm, config.norm_eps)
        if config.mlp == "swiglu":
            self.mlp = nn.Sequential(nn.Linear(H, 2 * F_), SwiGLU(), nn.Linear(F_, H))
        else:
            self.mlp = nn.Sequential(
                nn.Linear(H, F_), nn.GELU(approximate="tanh"), nn.Linear(F_, H)
            )
        self.adaLN_modulation = nn.Linear(config.cond_dim, 6 * H)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def attention(self, h, cos, sin):
        B, L, _ = h.shape
        d, heads, kv_heads = self.head_dim, self.n_heads, self.n_kv_heads
        q, k, v = self.attn_qkv(h).split([heads * d, kv_heads * d, kv_heads * d], dim=-1)
        q, k, v = q.view(B, L, heads, d), k.view(B, L, kv_heads, d), v.view(B, L, kv_heads, d)
        if hasattr(self, "attn_q_norm"):
            q, k = self.attn_q_norm(q).to(q.dtype), self.attn_k_norm(k).to(k.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_heads != heads:
            k, v = (t.repeat_interleave(heads // kv_heads, dim=2) for t in (k, v))
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=0.0
        )
        return self.attn_out(out.transpose(1, 2).reshape(B, L, heads * d))

    def forward(self, x, c, cos, sin):
        modulation = self.adaLN_modulation(c)[:, None].chunk(6, dim=2)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        x = gated_residual(self.attention(h, cos, sin), gate_msa, x, self.dropout, self.training)
        h = modulate(self.norm2(x), shift_mlp, scale_mlp)
        return gated_residual(self.mlp(h), gate_mlp, x, self.dropout, self.training)


class DDitFinalLayer(nn.Module):
    def __init__(self, hidden_size: int, vocab_rows: int, cond_dim: int, norm=("layernorm", 1e-5)):
        super().__init__()
        self.norm_final = LayerNorm(hidden_size, *norm)
        self.linear = nn.Linear(hidden_size, vocab_rows)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * hidden_size)
        for layer in (self.linear, self.adaLN_modulation):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=2)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SEDD(nn.Module):
    """Score network: (indices (B, L) int64, sigma (B,) total noise) -> log score (B, L, V')."""

    def __init__(self, config: SEDDConfig):
        super().__init__()
        self.config = config
        H, C = config.hidden_size, config.cond_dim
        self.vocab_embed = EmbeddingLayer(H, config.vocab_rows)
        if config.time_conditioning == "sigma":
            self.sigma_map = TimestepEmbedder(C)
        else:
            self.cond_map = ConstantConditioning(C)
        self.rotary_emb = Rotary(config.head_dim, config.rotary_base)
        self.blocks = nn.ModuleList(DDiTBlock(config) for _ in range(config.n_blocks))
        self.output_layer = DDitFinalLayer(
            H, config.vocab_rows, C, norm=(config.norm, config.norm_eps)
        )

    def forward(self, indices: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if indices.ndim != 2 or sigma.shape != indices.shape[:1]:
            raise ValueError(
                f"expected indices (B, L) and sigma (B,), got {tuple(indices.shape)} and "
                f"{tuple(sigma.shape)}"
            )
        x = self.vocab_embed(indices)
        if self.config.time_conditioning == "sigma":
            c = F.silu(self.sigma_map(sigma))
        else:
            c = self.cond_map(indices.shape[0])
        cos, sin = self.rotary_emb(indices.shape[1])
        for block in self.blocks:
            x = block(x, c, cos, sin)
        x = self.output_layer(x, c)
        if self.config.time_conditioning == "none":
            # log p(y | x_t) over the data tokens (the MASK column left out of the normaliser)
            # minus log(e^sigma - 1): the exact absorbing score's dependence on sigma.
            data = x[..., : self.config.tokens].float()
            lse = torch.logsumexp(data, dim=-1, keepdim=True).to(x.dtype)
            x = x - lse - score_log_expm1(sigma).to(x.dtype)[:, None, None]
        elif self.config.scale_by_sigma:
            x = x - score_log_expm1(sigma).to(x.dtype)[:, None, None] - math.log(x.shape[-1] - 1)
        return torch.scatter(x, -1, indices[..., None], torch.zeros_like(x[..., :1]))

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, weights_name: str | None = None, verify_checksums: bool = True
    ) -> "SEDD":
        """Load a local directory with config.json + model.safetensors or pytorch_model.bin
        (its checksum manifest, if any, checked first unless ``verify_checksums`` is False)."""
        return load_pretrained(
            cls, path, weights_name=weights_name, verify_checksums=verify_checksums
        )

    def save_pretrained(
        self,
        path: str | Path,
        *,
        safetensors: bool = True,
        pytorch_bin: bool = False,
        overwrite: bool = False,
    ) -> Path:
        """Write config.json + weights atomically into the directory ``path``."""
        return save_pretrained(
            self, path, safetensors=safetensors, pytorch_bin=pytorch_bin, overwrite=overwrite
        )
