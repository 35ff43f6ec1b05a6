"""Which hand-modelled family has which trait: the sets of model types the spec builders and the walk branch on
(the layer's shape, its norm, its token mixers, its MoE). A new hand-modelled family joins the sets here."""

from __future__ import annotations

# Families whose decoder layer is Llama-shaped (separate q/k/v/o, gated MLP, RMSNorm).
LLAMA_LIKE = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text", "mixtral", "phi3", "gpt_oss"}
    | {"smollm3", "granite", "ministral", "ministral3", "internlm3"}  # Llama's layer with the changes below
)
# Families with multi-head latent attention (DeepSeek-V2's MLA: q / kv low-rank projections, a rope / nope split)
# and a sigmoid group-limited router over fused experts, shared experts and dense bottom layers (spec/mla.py)
MLA_FAMILIES = frozenset({"deepseek_v3", "glm4_moe_lite"})
# Families with DeepSeek-V3's MoE (dense bottom layers, the group-limited sigmoid router, shared experts): the MLA
# ones and GLM-4.5's `glm4_moe` (GQA attention with partial rotary)
DEEPSEEK_MOE = MLA_FAMILIES | {"glm4_moe"}
# Families whose MLP is a routed mixture of experts (transformers 5 fused 3-D expert tensors + a top-k router)
MOE_FAMILIES = frozenset({"mixtral", "qwen3_moe", "gpt_oss"} | DEEPSEEK_MOE)
# Hybrid families whose decoder layer runs a Mamba-2 mixer beside the attention (spec/falcon_h1.py)
HYBRID_SSM = frozenset({"falcon_h1"})
# Families whose decoder layers mix tokens in one of two ways by `layer_types` (Qwen3.5: gated DeltaNet
# `linear_attention` layers and gated `full_attention` layers): each layer's linears exist only in layers of
# their kind (`LinearSpec.count`), and the walk follows each kind (estimator/delta_net_ops.py)
HYBRID_LINEAR_ATTENTION = frozenset({"qwen3_5_text"})
SUPPORTED_MODEL_TYPES = frozenset(
    LLAMA_LIKE | HYBRID_SSM | HYBRID_LINEAR_ATTENTION | DEEPSEEK_MOE | {"gpt_neox", "bloom", "phi"}
)
# `head_dim` when config.json has none: a fixed class default here (transformers 5.24 Qwen3Config 128,
# GemmaConfig / Gemma2Config / Gemma3TextConfig 256, GptOssConfig 64), hidden_size // num_attention_heads for
# every other family.
HEAD_DIM_DEFAULTS: dict[str, int] = {
    "qwen3": 128, "gemma": 256, "gemma2": 256, "gemma3_text": 256, "gpt_oss": 64, "qwen3_5_text": 256,
    "internlm3": 128, "ministral3": 128,  # InternLM3Config / Ministral3Config (5.25): head_dim 128
}  # fmt: skip
# Families whose RMSNorm is Gemma's: `(x.float() normed) * (1 + weight.float())` then `.type_as(x)`
# (modeling_gemma.py / modeling_gemma2.py / modeling_gemma3.py `Gemma*RMSNorm`, 5.24), not Llama's
# `weight * normed.to(input_dtype)`: a trainable weight saves the fp32 normed tensor, the output has x's dtype.
GEMMA_NORM = frozenset({"gemma", "gemma2", "gemma3_text", "qwen3_5_text"})  # and Qwen3_5RMSNorm (zero-centred)
# Families whose RMSNorm multiplies the fp32 normed tensor by the weight and then casts to the input dtype,
# `(weight * normed_fp32).to(input_dtype)` (modeling_gpt_oss.py GptOssRMSNorm, 5.24): Gemma's saved set and
# output dtype with a plain weight
FP32_PRODUCT_NORM = GEMMA_NORM | {"gpt_oss"}
# Families with learned attention sinks (a per-head logit joining the softmax): gpt-oss. transformers 5.24 runs
# them eager, flex (sinks applied through the log-sum-exp) or a flash kernel that takes `s_aux`; not SDPA
SINK_FAMILIES = frozenset({"gpt_oss"})
# Families whose decoder layers skip RoPE where `no_rope_layers[i]` is 0 (modeling_smollm3.py SmolLM3Attention,
# 5.25: `if self.use_rope:`), by default every `no_rope_layer_interval`-th (4th) layer: NoPE layers
NOPE_FAMILIES = frozenset({"smollm3"})
# Granite's muP multipliers (modeling_granite.py, 5.25): `inputs_embeds * embedding_multiplier`, each sublayer's
# output `* residual_multiplier` before the residual add, `logits / logits_scaling`; attention_multiplier is
# only SDPA's `scale`. Each is a Python float: a new tensor in its operand's dtype, nothing saved
SCALED_RESIDUAL = frozenset({"granite"})
# Ministral 3's query scaling after RoPE (modeling_ministral3.py `get_llama_4_attn_scale`, 5.25): q times a
# (1, 1, S, 1) scale cast to q's dtype, which the product saves (per layer, S elements)
QUERY_POSITION_SCALE = frozenset({"ministral3"})
# Families whose estimate takes transformers 5's `gradient_checkpointing_enable` -> enable_input_require_grads
# (modeling_utils.py, 5.25: every model whose main input is input_ids) into account: under checkpointing the
# bottom layer's input requires grad whatever the method (traced on each; the older families keep the PEFT-only
# rule until re-measured)
INPUT_GRADS_UNDER_CHECKPOINTING = HYBRID_LINEAR_ATTENTION | {
    "smollm3", "granite", "ministral", "ministral3", "internlm3",
}  # fmt: skip
