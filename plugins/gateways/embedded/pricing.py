"""Prices per token, from the alias's configured price or litellm's offline price map.

litellm ships its price map as a JSON file next to its package. Reading that file directly costs
~40 ms, where importing litellm costs ~3 s and ~200 MB — so a gateway whose providers are all
OpenAI-compatible never imports litellm at all. If the file cannot be found, litellm is imported
(with ``LITELLM_LOCAL_MODEL_COST_MAP=True``, so nothing reaches the network) and its
``model_cost`` is used.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger("hiclaw.gateway")

PRICE_MAP_FILE = "model_prices_and_context_window_backup.json"


def import_litellm() -> Any:
    """Import litellm offline and quiet (only ever called inside the gateway process)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return litellm


@lru_cache(maxsize=1)
def litellm_price_map() -> Mapping[str, Any]:
    if "litellm" in sys.modules:
        return sys.modules["litellm"].model_cost
    spec = importlib.util.find_spec("litellm")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / PRICE_MAP_FILE
        if path.is_file():
            with path.open(encoding="utf-8") as fh:
                return json.load(fh)
    return import_litellm().model_cost


@dataclass(frozen=True)
class Price:
    """USD per token; ``known`` is False when neither config nor the price map had a figure."""

    input_per_token: float
    output_per_token: float
    known: bool = True

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.input_per_token + completion_tokens * self.output_per_token


def _lookup(model: str, price_map: Mapping[str, Any]) -> Mapping[str, Any] | None:
    candidates = [model]
    if "/" in model:
        candidates.append(model.split("/", 1)[1])
    for key in candidates:
        entry = price_map.get(key)
        if isinstance(entry, Mapping) and "input_cost_per_token" in entry:
            return entry
    return None


def price_for(model: str, input_per_mtok: float | None, output_per_mtok: float | None) -> Price:
    """The configured per-million-token prices override the map, each on its own."""
    entry = None
    if input_per_mtok is None or output_per_mtok is None:
        entry = _lookup(model, litellm_price_map())
    known = entry is not None or (input_per_mtok is not None and output_per_mtok is not None)
    in_tok = input_per_mtok / 1e6 if input_per_mtok is not None else float((entry or {}).get("input_cost_per_token") or 0)
    out_tok = output_per_mtok / 1e6 if output_per_mtok is not None else float((entry or {}).get("output_cost_per_token") or 0)
    return Price(in_tok, out_tok, known)
