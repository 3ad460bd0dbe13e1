import torch

from sedd_megatron.plain import SEDD, SEDDConfig, expected_shapes, reference_keys
from sedd_megatron.plain.layout import rotary_inv_freq

# The reference state dict of the tiny config (H=64, C=32, 4 heads, 2 blocks, GPT-2 vocabulary,
# absorb), written out by hand (the general layout: docs/architecture.md §5).
SPEC_TINY_TABLE = """
vocab_embed.embedding                 (50258, 64)
sigma_map.mlp.0.weight                (32, 256)
sigma_map.mlp.0.bias                  (32,)
sigma_map.mlp.2.weight                (32, 32)
sigma_map.mlp.2.bias                  (32,)
rotary_emb.inv_freq                   (8,)
blocks.{i}.norm1.weight               (64,)
blocks.{i}.attn_qkv.weight            (192, 64)
blocks.{i}.attn_out.weight            (64, 64)
blocks.{i}.norm2.weight               (64,)
blocks.{i}.mlp.0.weight               (256, 64)
blocks.{i}.mlp.0.bias                 (256,)
blocks.{i}.mlp.2.weight               (64, 256)
blocks.{i}.mlp.2.bias                 (64,)
blocks.{i}.adaLN_modulation.weight    (384, 32)
blocks.{i}.adaLN_modulation.bias      (384,)
output_layer.norm_final.weight        (64,)
output_layer.linear.weight            (50258, 64)
output_layer.linear.bias              (50258,)
output_layer.adaLN_modulation.weight  (128, 32)
output_layer.adaLN_modulation.bias    (128,)
"""


def spec_tiny_shapes(n_blocks=2):
    head, block, tail = [], [], []
    for line in SPEC_TINY_TABLE.strip().splitlines():
        key, shape = line.split(maxsplit=1)
        shape = tuple(int(n) for n in shape.strip("()").split(",") if n.strip())
        (block if "{i}" in key else tail if block else head).append((key, shape))
    blocks = [(key.format(i=i), shape) for i in range(n_blocks) for key, shape in block]
    return dict(head + blocks + tail)


def gpt2_config(graph="absorb", **sizes) -> SEDDConfig:
    fields = dict(hidden_size=768, cond_dim=128, n_blocks=12, n_heads=12) | sizes
    return SEDDConfig(
        tokens=50257, graph=graph, length=1024, scale_by_sigma=graph == "absorb", **fields
    )


def meta_model(config):
    with torch.device("meta"):
        return SEDD(config)


def test_tiny_layout_matches_spec():
    config = gpt2_config(hidden_size=64, cond_dim=32, n_blocks=2, n_heads=4)
    expected = spec_tiny_shapes()
    assert len(expected) == 31
    assert expected_shapes(config) == expected
    assert reference_keys(config) == list(expected)
    state_dict = meta_model(config).state_dict()
    assert list(state_dict) == list(expected)
    assert {k: tuple(v.shape) for k, v in state_dict.items()} == expected
    assert all(v.dtype == torch.float32 for v in SEDD(config).state_dict().values())


def test_small_parameter_counts():
    for graph, params in (("absorb", 169_627_218), ("uniform", 169_625_681)):
        model = meta_model(gpt2_config(graph))
        assert sum(p.numel() for p in model.parameters()) == params
        state_dict = model.state_dict()
        assert len(state_dict) == 131 == 6 + 10 * 12 + 5
        assert list(state_dict) == reference_keys(model.config)
        embedding_keys = ("vocab_embed.embedding", "output_layer.linear.weight")
        embedding_keys += ("output_layer.linear.bias",)
        non_embedding = params - sum(state_dict[k].numel() for k in embedding_keys)
        assert non_embedding == 92_380_672


def test_medium_counts():
    config = gpt2_config(hidden_size=1024, n_blocks=24, n_heads=16)
    assert sum(p.numel() for p in meta_model(config).parameters()) == 424_477_010
    assert len(reference_keys(config)) == 251


def test_rotary_inv_freq():
    inv_freq = rotary_inv_freq(16)
    assert inv_freq.dtype == torch.float32 and inv_freq.shape == (8,)
    expected = torch.tensor([10000.0 ** (-2 * j / 16) for j in range(8)], dtype=torch.float64)
    torch.testing.assert_close(inv_freq.double(), expected, rtol=1e-6, atol=0)


def test_backbone_variant_layout_written_out():
    """RMSNorm + SwiGLU (F = 96) + 2 key/value heads + QK norm + head dim 24 + base 5e5, by hand:
    qkv rows (4 + 2 * 2) * 24, attention width 4 * 24, fc1 rows 2F, QK-norm weights of D."""
    config = gpt2_config(
        hidden_size=64, cond_dim=32, n_blocks=1, n_heads=4, ffn_hidden_size=96, n_kv_heads=2,
        kv_channels=24, rotary_base=5e5, norm="rmsnorm", mlp="swiglu", qk_norm=True,
    )  # fmt: skip
    block = {
        "blocks.0.norm1.weight": (64,),
        "blocks.0.attn_qkv.weight": (192, 64),
        "blocks.0.attn_q_norm.weight": (24,),
        "blocks.0.attn_k_norm.weight": (24,),
        "blocks.0.attn_out.weight": (64, 96),
        "blocks.0.norm2.weight": (64,),
        "blocks.0.mlp.0.weight": (192, 64),
        "blocks.0.mlp.0.bias": (192,),
        "blocks.0.mlp.2.weight": (64, 96),
        "blocks.0.mlp.2.bias": (64,),
        "blocks.0.adaLN_modulation.weight": (384, 32),
        "blocks.0.adaLN_modulation.bias": (384,),
    }
    shapes = expected_shapes(config)
    assert {k: v for k, v in shapes.items() if k.startswith("blocks.")} == block
    assert shapes["rotary_emb.inv_freq"] == (12,)
    model = meta_model(config)
    assert {k: tuple(t.shape) for k, t in model.state_dict().items()} == shapes
    expected_freq = 5e5 ** (-torch.arange(0, 24, 2, dtype=torch.float64) / 24)
    torch.testing.assert_close(rotary_inv_freq(24, 5e5), expected_freq.float())
