"""The decoder linears a merge may touch, and which captured input feeds each: names only, shared by the
architecture adapter, the Stage 1 maths and the memory plan."""

from __future__ import annotations

from typing import Literal

# the decoder linears a merge may touch (the config's `modules` choices)
Module = Literal["q", "k", "v", "o", "gate", "up", "down"]
ALL_MODULES: tuple[Module, ...] = ("q", "k", "v", "o", "gate", "up", "down")

# Which captured input feeds each linear: q/k/v share the attention input, gate/up the MLP input.
FEATURE_GROUP: dict[str, str] = {
    "q": "attn_in",
    "k": "attn_in",
    "v": "attn_in",
    "o": "o_in",
    "gate": "mlp_in",
    "up": "mlp_in",
    "down": "down_in",
}
# The module whose forward-pre-hook sees each feature group.
GROUP_HOOK: dict[str, Module] = {"attn_in": "q", "o_in": "o", "mlp_in": "gate", "down_in": "down"}
