"""Architecture adapter for the Llama / Qwen2 / Qwen2.5 / Mistral / Qwen3 decoder family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .linears import ALL_MODULES, FEATURE_GROUP, GROUP_HOOK, Module  # noqa: F401  (re-exported: callers import them from here too)

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")

_PATHS: dict[str, str] = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}

@dataclass(frozen=True)
class ArchSpec:
    model_type: str
    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool
    qk_norm: bool

    @property
    def n_rep(self) -> int:
        return self.num_heads // self.num_kv_heads

    def kv_head(self, head: int) -> int:
        """Query head h reads kv head floor(h / n_rep), as transformers' repeat_kv expands them."""
        if not 0 <= head < self.num_heads:
            raise IndexError(f"head {head} out of range [0, {self.num_heads})")
        return head // self.n_rep

    def query_heads(self, kv: int) -> list[int]:
        return list(range(kv * self.n_rep, (kv + 1) * self.n_rep))

    def module_path(self, layer: int, module: str) -> str:
        return f"model.layers.{layer}.{_PATHS[module]}"

    def weight_name(self, layer: int, module: str) -> str:
        return self.module_path(layer, module) + ".weight"

    def weight_shape(self, module: str) -> tuple[int, int]:
        d, hd = self.hidden, self.head_dim
        return {
            "q": (self.num_heads * hd, d),
            "k": (self.num_kv_heads * hd, d),
            "v": (self.num_kv_heads * hd, d),
            "o": (d, self.num_heads * hd),
            "gate": (self.intermediate, d),
            "up": (self.intermediate, d),
            "down": (d, self.intermediate),
        }[module]

    def dims(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, int) and not isinstance(v, bool)}


def arch_from_config(cfg: dict[str, Any], where: str = "model") -> ArchSpec:
    """Build the adapter from a config.json dict; head_dim is taken from the config when explicit."""
    mt = cfg.get("model_type")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"{where}: model_type '{mt}' is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    try:
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        kv = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        spec = ArchSpec(
            model_type=mt,
            num_layers=int(cfg["num_hidden_layers"]),
            hidden=hidden,
            num_heads=heads,
            num_kv_heads=kv,
            head_dim=head_dim,
            intermediate=int(cfg["intermediate_size"]),
            vocab_size=int(cfg["vocab_size"]),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=mt == "qwen2" or bool(cfg.get("attention_bias", False)),
            qk_norm=mt == "qwen3",
        )
    except KeyError as exc:
        raise ConfigError(f"{where}: config.json lacks {exc.args[0]!r}") from None
    if heads % kv:
        raise ConfigError(f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    if cfg.get("num_local_experts") or cfg.get("num_experts"):
        raise ConfigError(f"{where}: mixture-of-experts MLPs are not supported")
    return spec


# the dimensions that change a merged weight's meaning when they differ
COMPARED_DIMS = ("num_layers", "hidden", "num_heads", "num_kv_heads", "head_dim", "intermediate")


def compare_arch(ref: ArchSpec, other: ArchSpec, ref_role: str, role: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) of merging `role`'s model with `ref_role`'s: a different family (then nothing
    else is compared) or any differing dimension is an error; a different vocabulary size a warning."""
    if other.model_type != ref.model_type:
        return [f"architecture family differs: {ref_role} is '{ref.model_type}', {role} is '{other.model_type}'"], []
    errors = [f"{f} differs: {ref_role}={getattr(ref, f)}, {role}={getattr(other, f)}; these models cannot be merged"
              for f in COMPARED_DIMS if getattr(ref, f) != getattr(other, f)]
    if other.vocab_size == ref.vocab_size:
        return errors, []
    return errors, [f"vocab size differs ({ref_role}={ref.vocab_size}, {role}={other.vocab_size}); "
                    "embeddings and lm_head are never merged, so the LRM's are kept"]


def check_compatible(specs: dict[str, ArchSpec]) -> list[str]:
    """Fail on any difference that changes a merged weight's meaning; return warnings for the rest.
    The first role is the reference (the merge start passes the LRM first, as the plan compares)."""
    roles = list(specs)
    ref_role, ref = roles[0], specs[roles[0]]
    warnings: list[str] = []
    for role in roles[1:]:
        errors, warns = compare_arch(ref, specs[role], ref_role, role)
        if errors:
            raise ConfigError(errors[0])
        warnings += warns
    return warnings
