"""SEDD model configuration in the layout of the published ``louaaron/sedd-*`` config.json.

The published file is the full hydra config of the training run. SEDD reads only ``tokens``,
``graph.type``, ``noise.*`` and ``model.*``; everything else is kept in ``extra`` so that
``from_dict(d).to_dict() == d`` for a valid ``d``.
"""

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sedd_megatron.diffusion import GRAPHS, get_graph
from sedd_megatron.errors import ConfigError

GRAPH_TYPES = tuple(GRAPHS)  # the registered graph names
NOISE_TYPES = ("loglinear", "geometric")
MODEL_TYPES = ("ddit",)
TIME_CONDITIONINGS = ("sigma", "none")  # docs/math.md §8.6
NORMS = ("layernorm", "rmsnorm")  # adaLN-modulated norm of the blocks (and the QK norm)
MLPS = ("gelu", "swiglu")  # tanh-GELU (the reference) or SwiGLU (silu(gate) * up)

# (section, key, dataclass field); section None means top level.
_JSON_FIELDS = (
    (None, "tokens", "tokens"),
    ("graph", "type", "graph"),
    ("noise", "type", "noise_type"),
    ("noise", "sigma_min", "sigma_min"),
    ("noise", "sigma_max", "sigma_max"),
    ("model", "name", "name"),
    ("model", "type", "model_type"),
    ("model", "hidden_size", "hidden_size"),
    ("model", "cond_dim", "cond_dim"),
    ("model", "length", "length"),
    ("model", "n_blocks", "n_blocks"),
    ("model", "n_heads", "n_heads"),
    ("model", "scale_by_sigma", "scale_by_sigma"),
    ("model", "dropout", "dropout"),
    ("model", "time_conditioning", "time_conditioning"),
    ("model", "ffn_hidden_size", "ffn_hidden_size"),
    ("model", "n_kv_heads", "n_kv_heads"),
    ("model", "head_dim", "kv_channels"),
    ("model", "rotary_base", "rotary_base"),
    ("model", "norm", "norm"),
    ("model", "norm_eps", "norm_eps"),
    ("model", "mlp", "mlp"),
    ("model", "qk_norm", "qk_norm"),
)
# Fields written to config.json only when they differ from the default, so that published-layout
# configs stay exactly as published (the reference architecture has all of these defaults).
_OMIT_IF_DEFAULT = {
    "time_conditioning": "sigma",
    "ffn_hidden_size": None,
    "n_kv_heads": None,
    "kv_channels": None,
    "rotary_base": 10000.0,
    "norm": "layernorm",
    "norm_eps": 1e-5,
    "mlp": "gelu",
    "qk_norm": False,
}
_FIELD_NAMES = {
    name: key if section is None else f"{section}.{key}" for section, key, name in _JSON_FIELDS
}
_BACKBONE = (
    "ffn_hidden_size", "n_kv_heads", "kv_channels", "rotary_base", "norm", "norm_eps", "mlp",
    "qk_norm",
)  # fmt: skip
_REQUIRED = ("tokens", "graph", "hidden_size", "cond_dim", "length", "n_blocks", "n_heads")


@dataclass
class SEDDConfig:
    tokens: int  # data vocabulary size N (50257 for GPT-2)
    graph: str  # "absorb" (adds a MASK row) or "uniform"
    hidden_size: int
    cond_dim: int
    length: int  # training sequence length (not enforced by the model)
    n_blocks: int
    n_heads: int
    scale_by_sigma: bool = True
    dropout: float = 0.1
    noise_type: str = "loglinear"
    sigma_min: float = 1e-4
    sigma_max: float = 20.0
    name: str = "custom"
    model_type: str = "ddit"
    # "sigma": the network sees sigma (the reference). "none": time-independent absorbing SEDD,
    # a learned constant conditioning vector and log p(y | x_t) - log(e^sigma - 1) as log-score.
    time_conditioning: str = "sigma"
    # Backbone options beyond the reference DiT (docs/math.md §8.8); None: the reference's
    # value (4 * hidden_size, n_heads, hidden_size / n_heads).
    ffn_hidden_size: int | None = None  # MLP width F (SwiGLU: fc1 has 2F rows, gate then up)
    n_kv_heads: int | None = None  # key/value heads (grouped-query attention), divides n_heads
    kv_channels: int | None = None  # head dim; config.json key model.head_dim
    rotary_base: float = 10000.0
    norm: str = "layernorm"  # "layernorm" (no bias) or "rmsnorm", statistics in float32
    norm_eps: float = 1e-5
    mlp: str = "gelu"  # "gelu" (tanh) or "swiglu"
    qk_norm: bool = False  # a norm of the model's kind on each query and key head (before rotary)
    # config.json keys SEDD does not read (training, data, optim, ...), nested as in the file.
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        for name in ("tokens", "hidden_size", "cond_dim", "length", "n_blocks", "n_heads"):
            value = getattr(self, name)
            if not _is_positive_int(value):
                raise ConfigError(f"{_FIELD_NAMES[name]} must be a positive integer, got {value!r}")
        if self.graph not in GRAPH_TYPES:
            raise ConfigError(f"graph.type must be one of {GRAPH_TYPES}, got {self.graph!r}")
        if self.noise_type not in NOISE_TYPES:
            raise ConfigError(f"noise.type must be one of {NOISE_TYPES}, got {self.noise_type!r}")
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(f"model.type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if not isinstance(self.scale_by_sigma, bool):
            raise ConfigError(f"model.scale_by_sigma must be a bool, got {self.scale_by_sigma!r}")
        if self.scale_by_sigma and not GRAPHS[self.graph].sigma_scaling:
            raise ConfigError("model.scale_by_sigma=True is only allowed with graph.type 'absorb'")
        if self.time_conditioning not in TIME_CONDITIONINGS:
            raise ConfigError(
                f"model.time_conditioning must be one of {TIME_CONDITIONINGS}, "
                f"got {self.time_conditioning!r}"
            )
        if self.time_conditioning == "none":
            if not GRAPHS[self.graph].sigma_scaling:
                raise ConfigError(
                    "model.time_conditioning 'none' is only defined for graph.type "
                    f"'absorb', got {self.graph!r}"
                )
            if not self.scale_by_sigma:
                raise ConfigError(
                    "model.time_conditioning 'none' divides by e^sigma - 1 itself: it needs "
                    "model.scale_by_sigma=True"
                )
        self._check_backbone()
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be a number in [0, 1), got {self.dropout!r}")
        if not _is_number(self.sigma_min) or self.sigma_min <= 0:
            raise ConfigError(f"noise.sigma_min must be positive, got {self.sigma_min!r}")
        if not _is_number(self.sigma_max) or self.sigma_max <= self.sigma_min:
            raise ConfigError(f"noise.sigma_max must exceed sigma_min, got {self.sigma_max!r}")
        if not isinstance(self.name, str):
            raise ConfigError(f"model.name must be a string, got {self.name!r}")
        if not isinstance(self.extra, dict):
            raise ConfigError(f"extra must be a dict, got {type(self.extra).__name__}")

    def _check_backbone(self) -> None:
        for name in ("ffn_hidden_size", "n_kv_heads", "kv_channels"):  # None: the reference's
            value = getattr(self, name)
            if value is not None and not _is_positive_int(value):
                raise ConfigError(f"{_FIELD_NAMES[name]} must be a positive integer, got {value!r}")
        if self.kv_channels is None and self.hidden_size % self.n_heads:
            raise ConfigError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by "
                f"model.n_heads ({self.n_heads}) (or give model.head_dim)"
            )
        if self.head_dim % 2:
            raise ConfigError(f"the head dim ({self.head_dim}) must be even (rotary)")
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                f"model.n_heads ({self.n_heads}) must be divisible by model.n_kv_heads "
                f"({self.kv_heads})"
            )
        if self.norm not in NORMS:
            raise ConfigError(f"model.norm must be one of {NORMS}, got {self.norm!r}")
        if self.mlp not in MLPS:
            raise ConfigError(f"model.mlp must be one of {MLPS}, got {self.mlp!r}")
        if not isinstance(self.qk_norm, bool):
            raise ConfigError(f"model.qk_norm must be a bool, got {self.qk_norm!r}")
        for name in ("rotary_base", "norm_eps"):
            value = getattr(self, name)
            if not _is_number(value) or not value > 0:
                raise ConfigError(f"{_FIELD_NAMES[name]} must be a positive number, got {value!r}")

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads: n_kv_heads, or n_heads (multi-head attention)."""
        return self.n_kv_heads or self.n_heads

    @property
    def ffn_width(self) -> int:
        """The MLP width F: ffn_hidden_size, or the reference's 4 * hidden_size."""
        return self.ffn_hidden_size or 4 * self.hidden_size

    @property
    def reference_backbone(self) -> bool:
        """Whether every backbone option has the reference DiT's value."""
        return all(getattr(self, name) == _OMIT_IF_DEFAULT[name] for name in _BACKBONE)

    @property
    def vocab_rows(self) -> int:
        """Embedding and output rows: tokens + 1 (MASK) for absorb, tokens for uniform."""
        return get_graph(self.graph, self.tokens).dim

    @classmethod
    def from_dict(cls, config: dict) -> "SEDDConfig":
        if not isinstance(config, dict):
            raise ConfigError(f"config must be a dict, got {type(config).__name__}")
        extra = copy.deepcopy(config)
        values = {}
        for section, key, name in _JSON_FIELDS:
            where = extra if section is None else extra.get(section)
            if section is not None and where is not None and not isinstance(where, dict):
                raise ConfigError(f"config field {section!r} must be a mapping, got {where!r}")
            if where is not None and key in where:
                values[name] = where.pop(key)
            elif name in _REQUIRED:
                raise ConfigError(f"config is missing {_FIELD_NAMES[name]!r}")
        for section in ("graph", "noise", "model"):
            if extra.get(section) == {}:
                del extra[section]
        return cls(**values, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = copy.deepcopy(self.extra)
        for section, key, name in _JSON_FIELDS:
            if name in _OMIT_IF_DEFAULT and getattr(self, name) == _OMIT_IF_DEFAULT[name]:
                continue
            where = out if section is None else out.setdefault(section, {})
            where[key] = getattr(self, name)
        return out

    @classmethod
    def from_json(cls, path: str | Path) -> "SEDDConfig":
        path = Path(path)
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON: {err}") from err
        try:
            return cls.from_dict(config)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
