"""The Hub card is built with huggingface_hub's own card classes: metadata the Hub validates and the
evaluation in model-index form (rendered as results on the model page)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from huggingface_hub import ModelCard  # noqa: E402

from rainmerge.product.hub import model_card  # noqa: E402

INPUTS = {
    "base": {"path": "Qwen/Qwen2.5-7B", "commit": "a" * 40, "resolved_dir": "/hf/cache/base"},
    "instruct": {"path": "Qwen/Qwen2.5-7B-Instruct", "commit": "b" * 40, "resolved_dir": "/hf/cache/itm"},
    "reasoning": {"path": "/srv/models/my-lrm", "resolved_dir": "/srv/models/my-lrm",
                  "weights_sha256": {"model.safetensors": "c" * 64}},
}
METRICS = [{"model": "reasoning", "if_inst_strict": 0.2, "think_well_formed": 1.0, "reasoning_acc": 0.9},
           {"model": "merged", "if_inst_strict": 0.31, "think_well_formed": 0.995, "reasoning_acc": 0.89,
            "if_prompt_strict": 0.25}]


def test_card_metadata_and_model_index_parse_back_with_the_hub_classes():
    text = model_card({"method": "rain", "strength": 0.5, "output": "/srv/out"}, INPUTS, METRICS, "3",
                      ["demo"], repo_id="acme/rain-7b")
    card = ModelCard(text)
    assert card.data.base_model == ["Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B-Instruct"]  # Hub parents only
    assert card.data.base_model_relation == "merge"
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"if_inst_strict": 0.31, "if_prompt_strict": 0.25, "think_well_formed": 0.995,
                       "reasoning_acc": 0.89}  # the merged model's, not the LRM's
    assert card.data.model_name == "acme/rain-7b" and "demo" in card.data.tags
    assert "/srv/" not in text and "local:my-lrm (sha256" in text  # never this machine's paths
    assert "a" * 40 in text  # Hub parents pinned to their commit
