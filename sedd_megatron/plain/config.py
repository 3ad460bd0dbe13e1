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
)
# Fields written to config.json only when they differ from the default, so that published-layout
# configs stay exactly as published.
_OMIT_IF_DEFAULT = {"time_conditioning": "sigma"}
_FIELD_NAMES = {
    name: key if section is None else f"{section}.{key}" for section, key, name in _JSON_FIELDS
}
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
    # config.json keys SEDD does not read (training, data, optim, ...), nested as in the file.
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        for name in ("tokens", "hidden_size", "cond_dim", "length", "n_blocks", "n_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
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
        if self.hidden_size % self.n_heads:
            raise ConfigError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by "
                f"model.n_heads ({self.n_heads})"
            )
        if self.head_dim % 2:
            raise ConfigError(
                f"head dim model.hidden_size/n_heads = {self.head_dim} must be even (rotary)"
            )
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

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

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


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
