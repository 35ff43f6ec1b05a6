"""Profiles added for the real example configs (validation/real-configs), held to their model cards' sizes."""

from __future__ import annotations

import pytest

from vramplan.sources.profiles import builtin_for_repo, load_model

# profile: (billions the card states, tolerance, where). phi-1.5: "a Transformer with 1.3 billion parameters"
# (microsoft/phi-1_5 model card); the built model holds 1.432 B, its untied 51200 x 2048 input and output
# embeddings (0.21 B) included, hence 11 %.
# starcoder2-3b: "Parameter Count 3.03B" (https://www.promptlayer.com/models/starcoder2-3b, the hub's count).
# magistral-small-2509: "a small, efficient reasoning model with 24B parameters" (the card); built: 23.34 B.
# dbrx: "132B total parameters of which 36B parameters are active" (transformers docs/source/en/model_doc/dbrx.md,
# from the DBRX card); built: 131.60 B.
CARD_BILLIONS = {
    "phi-1.5": (1.3, 0.11),
    "starcoder2-3b": (3.03, 0.005),
    "magistral-small-2509": (24, 0.05),
    "dbrx": (132, 0.005),
    "deepseek-v2": (236, 0.005),
    "llama-3.2-11b-vision": (10.6, 0.005),
    "olmo-3-7b": (7.3, 0.005),
}
# olmo-3-7b: the hub page's "7.3B" for allenai/Olmo-3-7B-Think, an Olmo3ForCausalLM checkpoint of the same 7B
# (a stored hub-cache test, find_string id 61374415609, formats 7_298_011_136 as "7.3B"); built: 7,298,011,136.
# deepseek-v2: "236B total parameters, of which 21B are activated for each token" (the DeepSeek-V2 card).
# AutoModelForCausalLM.from_config on meta (transformers 5.25) builds 235.74 B: layer 0 a dense 12288 MLP
# (first_k_dense_replace 1), 59 MoE layers; the generic path counts 239.38 B, layer 0 as a MoE layer too (+3.63 B).
# llama-3.2-11b-vision: "Llama 3.2-Vision 11B (10.6)" (the card's table); MllamaForConditionalGeneration on meta
# (transformers 5.25) holds 10.643 B, MllamaForCausalLM (what AutoModelForCausalLM builds) 9.775 B.
CARD_GAPS = {
    "llama-3.2-11b-vision": "generic path: 8.349 B, the text model only (AutoModelForCausalLM loads no vision tower) "
    "and 13 mllama tensor shapes from the class defaults' table; transformers 5.25 builds 9.775 B text-only, "
    "10.643 B with the tower",
    "deepseek-v2": "generic path: 239.38 B (layer 0 counted as MoE, first_k_dense_replace ignored) vs 235.74 B built "
    "by transformers 5.25 and the card's 236 B",
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(reason=CARD_GAPS[n], strict=True)) if n in CARD_GAPS else n
        for n in sorted(CARD_BILLIONS)
    ],
)
def test_profile_matches_the_card(name: str) -> None:
    billions, rel = CARD_BILLIONS[name]
    assert load_model(name).total_params == pytest.approx(billions * 1e9, rel=rel)


HUB_IDS = [
    ("microsoft/phi-1_5", "phi-1.5"),
    ("microsoft/phi-1.5", "phi-1.5"),
    ("bigcode/starcoder2-3b", "starcoder2-3b"),
    ("bigcode/starcoder2-7b", "starcoder2-7b"),  # each size its own profile
    ("mistralai/Magistral-Small-2509", "magistral-small-2509"),  # the VLM, not 2506's text-only profile
    ("mistralai/Magistral-Small-2506", "magistral-small-2506"),
    ("deepseek-ai/DeepSeek-V3-0324-BF16", "deepseek-v3"),  # the alias, a dtype word dropped
    ("deepseek-ai/DeepSeek-V3.1", None),  # a later checkpoint the card of 0324 does not speak for
    ("Skywork/Skywork-Reward-V2-Qwen3-8B", "qwen3-8b"),  # its card's base model (a reward model: --stage rm)
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", "qwen2.5-14b"),  # DeepSeek-R1's table: base Qwen2.5-14B
    ("agentica-org/DeepCoder-14B-Preview", "qwen2.5-14b"),  # fine-tuned from R1-Distill-Qwen-14B (its card)
    ("Skywork/Skywork-Reward-V2-Qwen3-4B", None),  # only the named sizes are aliased
    ("LnL-AI/dbrx-base-converted-v2", "dbrx"),  # dbrx-base, its experts split per expert
    ("databricks/dbrx-instruct", "dbrx"),
    ("axolotl-quants/DeepSeek-V2.5-bnb-nf4-bf16", "deepseek-v2"),  # V2.5: DeepSeek-V2's architecture (its card)
    ("deepseek-ai/DeepSeek-V2-Lite", "deepseek-v2-lite"),  # not the 236B profile
    ("alpindale/Llama-3.2-11B-Vision-Instruct", "llama-3.2-11b-vision"),  # a mirror of the -Instruct checkpoint
    ("meta-llama/Llama-3.2-1B", "llama-3.2-1b"),  # the text models keep their own profiles
    ("allenai/Olmo-3-7B-Instruct-SFT", "olmo-3-7b"),  # the alias: -SFT is not a variant word
    ("allenai/OLMo-2-1124-7B", "olmo-2-7b"),
]


@pytest.mark.parametrize(("repo", "profile"), HUB_IDS)
def test_hub_ids_resolve(repo: str, profile: str) -> None:
    assert builtin_for_repo(repo) == profile
