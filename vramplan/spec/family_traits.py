"""Which hand-modelled family has which trait: the sets of model types the spec builders and the walk branch on
(the layer's shape, its norm, its token mixers, its MoE). A new hand-modelled family joins the sets here."""

from __future__ import annotations

# Families whose decoder layer is Llama-shaped (separate q/k/v/o, gated MLP, RMSNorm).
LLAMA_LIKE = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text", "mixtral", "phi3", "gpt_oss"}
    | {"olmo2", "olmo3", "exaone4"}
    | {"glm4", "cohere2"}
    | {"smollm3", "granite", "ministral", "ministral3", "internlm3"}  # Llama's layer with the changes below
)
# Families with multi-head latent attention (DeepSeek-V2's MLA: q / kv low-rank projections, a rope / nope split)
# and a sigmoid group-limited router over fused experts, shared experts and dense bottom layers (spec/mla.py)
MLA_FAMILIES = frozenset({"deepseek_v3", "glm4_moe_lite"})
# Families with DeepSeek-V3's MoE (dense bottom layers, the group-limited sigmoid router, shared experts): the MLA
# ones and GLM-4.5's `glm4_moe` (GQA attention with partial rotary)
DEEPSEEK_MOE = MLA_FAMILIES | {"glm4_moe"}
# Families whose MLP is a routed mixture of experts (transformers 5 fused 3-D expert tensors + a top-k router)
MOE_FAMILIES = frozenset({"mixtral", "qwen3_moe", "gpt_oss", "qwen3_5_moe_text"} | DEEPSEEK_MOE)
# Hybrid families whose decoder layer runs a Mamba-2 mixer beside the attention (spec/falcon_h1.py)
HYBRID_SSM = frozenset({"falcon_h1"})
# Families whose decoder layers mix tokens in one of two ways by `layer_types` (Qwen3.5: gated DeltaNet
# `linear_attention` layers and gated `full_attention` layers): each layer's linears exist only in layers of
# their kind (`LinearSpec.count`), and the walk follows each kind (estimator/delta_net_ops.py); Qwen3.5-MoE's
# layers are the same with a sparse MoE block for the MLP
HYBRID_LINEAR_ATTENTION = frozenset({"qwen3_5_text", "qwen3_5_moe_text"})
# Families whose layers differ in shape by `layer_types` and KV sharing (Gemma 4: global layers' own head_dim and
# key heads, shared-KV layers without k / v): spec/gemma4.py, walked layer by layer (estimator/gemma4_ops.py)
PER_LAYER_SHAPES = frozenset({"gemma4_text"})
HAND_MODELLED_TYPES = frozenset(
    LLAMA_LIKE | HYBRID_SSM | HYBRID_LINEAR_ATTENTION | DEEPSEEK_MOE | PER_LAYER_SHAPES | {"gpt_neox", "bloom", "phi"} | {"starcoder2"}
    | {"falcon", "gpt_bigcode"}
)
# Gemma 3n (spec/gemma3n.py): Gemma 4's per-layer shapes (KV-shared layers, per-layer MLP widths) around the AltUp
# stack of `altup_num_inputs` hidden states, Laurel and per-layer inputs, walked by estimator/gemma3n_ops.py
PER_LAYER_SHAPES |= {"gemma3n_text"}
HAND_MODELLED_TYPES |= {"gemma3n_text"}
# Llama 4's text model (spec/llama4.py): interleaved dense / routed layers (a shared expert, a sigmoid router whose
# experts see every token), chunked RoPE layers with an L2 qk-norm, NoPE global layers (estimator/llama4_ops.py)
HAND_MODELLED_TYPES |= {"llama4_text"}
# `head_dim` when config.json has none: a fixed class default here (transformers 5.24 Qwen3Config 128,
# GemmaConfig / Gemma2Config / Gemma3TextConfig 256, GptOssConfig 64), hidden_size // num_attention_heads for
# every other family.
HEAD_DIM_DEFAULTS: dict[str, int] = {
    "qwen3": 128, "gemma": 256, "gemma2": 256, "gemma3_text": 256, "gpt_oss": 64, "qwen3_5_text": 256,
    "qwen3_5_moe_text": 256,
    "glm4": 128,
    "gemma4_text": 256,
    "internlm3": 128, "ministral3": 128,  # InternLM3Config / Ministral3Config (5.25): head_dim 128
    "gemma3n_text": 256,  # Gemma3nTextConfig (5.25)
}  # fmt: skip
# Families whose RMSNorm is Gemma's: `(x.float() normed) * (1 + weight.float())` then `.type_as(x)`
# (modeling_gemma.py / modeling_gemma2.py / modeling_gemma3.py `Gemma*RMSNorm`, 5.24), not Llama's
# `weight * normed.to(input_dtype)`: a trainable weight saves the fp32 normed tensor, the output has x's dtype.
# and Qwen3_5RMSNorm / Qwen3_5MoeRMSNorm (zero-centred)
GEMMA_NORM = frozenset({"gemma", "gemma2", "gemma3_text", "qwen3_5_text", "qwen3_5_moe_text"})
# Families whose RMSNorm multiplies the fp32 normed tensor by the weight and then casts to the input dtype,
# `(weight * normed_fp32).to(input_dtype)` (modeling_gpt_oss.py GptOssRMSNorm, 5.24): Gemma's saved set and
# output dtype with a plain weight
# and Olmo2RMSNorm / Olmo3RMSNorm (5.25); Gemma 4 too: `(normed_fp32 * weight.float()).type_as(x)` (Gemma4RMSNorm)
FP32_PRODUCT_NORM = GEMMA_NORM | {"gpt_oss", "olmo2", "olmo3", "gemma4_text"}
FP32_PRODUCT_NORM |= {"gemma3n_text"}  # Gemma3nRMSNorm (5.25): Gemma4RMSNorm's math
# Families with learned attention sinks (a per-head logit joining the softmax): gpt-oss. transformers 5.24 runs
# them eager, flex (sinks applied through the log-sum-exp) or a flash kernel that takes `s_aux`; not SDPA
SINK_FAMILIES = frozenset({"gpt_oss"})
# Post-norm decoder layers: no norm before the attention or the MLP; `post_attention_layernorm` and
# `post_feedforward_layernorm` norm their outputs before each residual add (transformers 5.25 modeling_olmo2.py
# Olmo2DecoderLayer, modeling_olmo3.py, modeling_exaone4.py Exaone4DecoderLayer)
POST_NORM = frozenset({"olmo2", "olmo3", "exaone4"})
# q_norm / k_norm over the whole projection (num_heads·head_dim, num_kv_heads·head_dim), applied to q_proj's and
# k_proj's outputs before the head reshape (modeling_olmo2.py Olmo2Attention); EXAONE 4's are per head (qwen3's)
PROJECTION_QK_NORM = frozenset({"olmo2", "olmo3"})
# Families whose rotary cos / sin stay fp32 (Olmo2RotaryEmbedding.forward returns them uncast) and whose
# apply_rotary_pos_emb casts q·cos + rotate_half(q)·sin back to q's dtype: the rotated q / k keep q's dtype
FP32_ROPE = frozenset({"olmo2", "olmo3"})
# Sandwich-norm decoder layers: a norm before the attention and the MLP and one on each output before the residual
# add (4 RMSNorms a layer): Gemma 2 / 3 (post_attention_layernorm, post_feedforward_layernorm; Gemma's norm) and GLM-4
# (modeling_glm4.py Glm4DecoderLayer, 5.25: post_self_attn_layernorm, post_mlp_layernorm; Llama's norm)
SANDWICH_NORM = frozenset({"gemma2", "gemma3_text", "glm4"})
# Families whose MLP is one fused gate_up_proj, chunked in two, `up * act(gate)`, then down_proj (Phi-3's
# Phi3MLP; GLM-4's Glm4MLP, modeling_glm4.py 5.25)
FUSED_GATE_UP = frozenset({"phi3", "glm4"})
# Families whose norm is Cohere's mean-centred LayerNorm without a bias (modeling_cohere2.py Cohere2LayerNorm,
# 5.25): fp32 math, `(x - mean)` twice (pow saves one, the product the other), rsqrt, then
# `(weight.float() * normed).to(input_dtype)`; one weight of hidden_size (counted as an RMSNorm's)
MEAN_CENTRED_NORM = frozenset({"cohere2"})
# Families whose full-attention layers have no rotary embedding (NoPE): Cohere 2 rotates q / k only in its
# sliding-window layers (Cohere2Attention.forward, 5.25: `if self.sliding_window is not None`)
NOPE_ON_FULL_LAYERS = frozenset({"cohere2"})


def model_dropout(model_type: str, config, key: str) -> float:
    """A dropout the model itself applies in training (StarCoder2's `residual_dropout` after o_proj and c_proj,
    `embedding_dropout` after the embeddings; modeling_starcoder2.py, 5.25; GPT-BigCode's `resid_pdrop` after
    attn.c_proj and mlp.c_proj, `embd_pdrop` after wte + wpe, modeling_gpt_bigcode.py), 0.0 for the other
    families (their tiny and published configs train without one; Falcon's are 0 in its published configs)."""
    default = 0.0
    if model_type == "gpt_bigcode":  # GPTBigCodeConfig (5.25): resid_pdrop, embd_pdrop, attn_pdrop, 0.1 each
        key, default = {"residual_dropout": "resid_pdrop", "embedding_dropout": "embd_pdrop"}.get(key, key), 0.1
    elif model_type != "starcoder2":
        return 0.0
    value = config.get(key, default)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
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
# Families whose decoder layer ends in a norm of the MLP's output, its last saving op (estimator/output_norm_ops.py):
# the post-norm and sandwich-norm layers, and Gemma 4's (modeling_gemma4.py Gemma4TextDecoderLayer, 5.25:
# `post_feedforward_layernorm`)
OUTPUT_NORM = POST_NORM | SANDWICH_NORM | {"gemma4_text"}
# Families whose model multiplies the embedding module's output outside it (`self.embed_tokens(input_ids) *
# embedding_multiplier`: modeling_granite.py, modeling_falcon_h1.py FalconH1Model.forward, 5.25): under
# checkpointing the hooked embedding output is a leaf of its own beside the layers' input (activations.py)
EMBEDDING_SCALED_OUTSIDE = SCALED_RESIDUAL | {"falcon_h1"}
INPUT_GRADS_UNDER_CHECKPOINTING |= {"falcon", "gpt_bigcode"}  # traced on each (tests/oracle FAMILY_GRID)
INPUT_GRADS_UNDER_CHECKPOINTING |= {"gemma3n_text"}  # traced: its stack's making saves more then (gemma3n_ops)
