"""The accuracy grid: configurations the estimator is held to (tests/oracle, benchmarks/accuracy.py)."""

from __future__ import annotations

SMALL_LLAMA = {
    "model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
    "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 1000, "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}  # fmt: skip
BASE = {"method": "lora", "batch": 2, "seq": 128, "lora_rank": 8, "lora_dropout": 0.0}

CASES = {
    "lora": {},
    "lora-dropout": {"lora_dropout": 0.05},
    "lora-qv": {"lora_target": "qv"},
    "lora-ckpt": {"grad_ckpt": True},
    "lora-eager": {"attn": "eager"},
    "lora-no-autocast": {"mixed_precision": "no"},
    "lora-fp32-autocast": {"dtype": "fp32"},
    "lora-fp16": {"dtype": "fp16", "mixed_precision": "fp16"},
    "lora-dora": {"dora": True},
    "lora-dora-dropout": {"dora": True, "lora_dropout": 0.05},
    "lora-dora-ckpt": {"dora": True, "grad_ckpt": True},
    "lora-batch4-seq256": {"batch": 4, "seq": 256},
    "lora-grad-accum": {"grad_accum": 4},
    "lora-adamw-foreach": {"optim": "adamw_torch"},
    "lora-sgd": {"optim": "sgd"},
    "full": {"method": "full"},
    "full-ckpt": {"method": "full", "grad_ckpt": True},
    "full-fp32-master": {"method": "full", "dtype": "fp32"},
    "full-fp32-no-autocast": {"method": "full", "dtype": "fp32", "mixed_precision": "no"},
    "freeze": {"method": "freeze", "freeze_trainable_layers": 2},
    "qlora": {"method": "qlora"},
    "qlora-no-ckpt": {"method": "qlora", "grad_ckpt": False},
    "qlora-fp4-no-dq": {"method": "qlora", "quant": "fp4", "double_quant": False},
    "qlora-no-kbit-prep": {"method": "qlora", "kbit_prep": False, "grad_ckpt": False},
    "qlora-no-autocast": {"method": "qlora", "kbit_prep": False, "mixed_precision": "no", "grad_ckpt": False},
    "qlora-dropout": {"method": "qlora", "lora_dropout": 0.05},
    "qlora-int8": {"method": "qlora", "quant": "int8"},
    "qlora-int8-no-ckpt": {"method": "qlora", "quant": "int8", "grad_ckpt": False},
    "qlora-int8-dropout": {"method": "qlora", "quant": "int8", "lora_dropout": 0.05},
    "qlora-dora": {"method": "qlora", "dora": True},
    "qlora-8bit-optim": {"method": "qlora", "optim": "adamw_8bit"},
    "qlora-paged-optim": {"method": "qlora", "optim": "paged_adamw_8bit"},
    # TRL's chunked fused LM head (traced on its CUDA path, measure/losses.py), alone and in TRL's recipe
    "lora-trl-loss": {"loss": "trl-chunked"},
    "lora-trl-recipe": {
        "loss": "trl-chunked",
        "dtype": "fp32",
        "grad_ckpt": True,
        "lora_target": "qv",
        "lora_dropout": 0.05,
    },
    "full-trl-loss": {"method": "full", "loss": "trl-chunked"},
    "qlora-trl-loss": {"method": "qlora", "loss": "trl-chunked"},
    # packed rows (position_ids restarting): SDPA's block-diagonal mask without a cache, none with one
    "lora-packed-trl": {"loss": "trl-chunked", "packing": True},
    "lora-packed-ckpt": {"packing": True, "grad_ckpt": True},
    "lora-packed-cache": {"packing": True},
    # Liger's RMSNorm / SwiGLU / RoPE (Triton only: traced with CPU stand-ins that allocate what Liger's autograd
    # Functions allocate, measure/liger.py)
    "lora-liger": {"liger_kernels": True},
    # axolotl's fused LoRA Functions (CPU stand-ins allocating what they allocate, measure/lora_kernels.py)
    "lora-kernels": {"lora_kernels": "qkv,o,mlp"},
    "lora-kernels-dropout": {"lora_kernels": "qkv,o,mlp", "lora_dropout": 0.05},
    "lora-kernels-ckpt": {"lora_kernels": "qkv,o,mlp", "grad_ckpt": True},
    "lora-liger-ckpt": {"liger_kernels": True, "grad_ckpt": True},
    "full-liger": {"method": "full", "liger_kernels": True},
}
# cases that trace TRL's own code (skipped where trl is not installed)
NEEDS_TRL = frozenset(case for case, settings in CASES.items() if settings.get("loss") == "trl-chunked")

FAMILIES = [
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "mixtral",
    "qwen3_moe",
    "falcon_h1",
    "gpt_oss",
    "deepseek_v3",
    "glm4_moe_lite",
    "glm4_moe",
    "qwen3_5_text",
    "qwen3_5_moe_text",
    "gemma4_text",
    "gpt_neox",
    "bloom",
    "phi",
    "olmo2",
    "olmo3",
    "exaone4",
    "glm4",
    "starcoder2",
    "cohere2",
    "smollm3",
    "granite",
    "ministral",
    "ministral3",
    "internlm3",
    "falcon",
    "gpt_bigcode",
    "gemma3n_text",
]

# The 2025-26 families, hand-modelled: each tiny config (tests/conftest.py TINY_CONFIGS) through the methods,
# checkpointing and attention kernels (seq 64: past gemma3_text's 32-token window, so its sliding layers take
# the masked SDPA path), on top of BASE with seq 64
FAMILY_CASES = {
    "lora": {},
    "lora-ckpt": {"grad_ckpt": True},
    "lora-eager": {"attn": "eager"},
    "lora-inside-window": {"seq": 16},
    "full": {"method": "full"},
    "full-ckpt": {"method": "full", "grad_ckpt": True},
    "qlora": {"method": "qlora"},
    "qlora-no-ckpt": {"method": "qlora", "grad_ckpt": False},
}
FAMILY_GRID = (
    "gemma3_text", "qwen3_moe", "falcon_h1", "gpt_oss", "deepseek_v3", "glm4_moe", "qwen3_5_text", "qwen3_5_moe_text",
    "olmo2", "olmo3", "exaone4",
)  # fmt: skip
FAMILY_GRID += ("glm4", "starcoder2", "cohere2")
FAMILY_GRID += ("gemma4_text",)
FAMILY_GRID += ("smollm3", "granite", "ministral", "ministral3", "internlm3")
FAMILY_GRID += ("falcon", "gpt_bigcode")
FAMILY_GRID += ("gemma3n_text",)
FAMILY_GRID += ("llama4_text",)
# Qwen3.5's DeltaNet scans each sequence in 64-token chunks (the family grid's seq 64 is one): several chunks,
# whose later ones save more, and a sequence the chunks do not divide (F.pad to whole chunks), on BASE
DELTA_NET_CASES = {
    "lora-4-chunks": {"seq": 256},
    "lora-ckpt-padded": {"seq": 200, "grad_ckpt": True},
    "qlora-padded": {"method": "qlora", "seq": 200},
}

GEMMA4_6 = ["sliding_attention"] * 5 + ["full_attention"]  # Gemma 4's first 6 layers (a truncated model)
# Full-size simulations (meta / fake tensors; bitsandbytes runs on meta), (model, device, estimate options[,
# config.json changes: a truncated model])
FULL_SIZE = {
    "llama-2-7b lora seq512": ("llama-2-7b", "fake", {"method": "lora", "seq": 512}),
    "llama-2-7b lora seq512 ckpt": ("llama-2-7b", "fake", {"method": "lora", "seq": 512, "grad_ckpt": True}),
    "llama-2-7b qlora seq512": ("llama-2-7b", "meta", {"method": "qlora", "seq": 512}),
    "llama-2-7b qlora seq512 no-ckpt": (
        "llama-2-7b",
        "meta",
        {"method": "qlora", "seq": 512, "grad_ckpt": False},
    ),
    "llama-3-8b qlora seq1024": ("llama-3-8b", "meta", {"method": "qlora", "seq": 1024}),
    "qwen2.5-7b qlora seq1024 b2": ("qwen2.5-7b", "meta", {"method": "qlora", "seq": 1024, "batch": 2}),
    "llama-2-7b dora seq512": ("llama-2-7b", "fake", {"method": "lora", "seq": 512, "dora": True}),
    "llama-2-7b qlora dora seq512": ("llama-2-7b", "meta", {"method": "qlora", "seq": 512, "dora": True}),
    "llama-2-7b qlora int8 seq512": ("llama-2-7b", "meta", {"method": "qlora", "seq": 512, "quant": "int8"}),
    "gemma-2-2b lora seq1024": ("gemma-2-2b", "fake", {"method": "lora", "seq": 1024}),
    "gemma-3-1b lora seq1024": ("gemma-3-1b", "fake", {"method": "lora", "seq": 1024}),
    "gemma-3-1b qlora seq1024": ("gemma-3-1b", "meta", {"method": "qlora", "seq": 1024}),
    # Qwen3-MoE: 128 fused 3-D experts per layer, upcast to fp32 by kbit prep (bitsandbytes leaves them alone)
    # (LoRA on the attention: PEFT fails on expert LoRA over fp32 experts under autocast, a note says so)
    "qwen3-30b-a3b qlora seq512": ("qwen3-30b-a3b", "meta", {"method": "qlora", "seq": 512, "lora_target": "attn"}),
    # Falcon-H1: the hybrid layer (Mamba-2 mixer on transformers' torch SSD + attention), 256-token chunks
    "falcon-h1-1.5b lora seq512": ("falcon-h1-1.5b", "fake", {"method": "lora", "seq": 512}),
    # gpt-oss: eager attention with the sink column (no SDPA for sinks), 32 fused experts with biases
    "gpt-oss-20b lora seq1024": ("gpt-oss-20b", "fake", {"method": "lora", "seq": 1024, "lora_target": "attn"}),
    "gpt-oss-20b qlora seq1024": ("gpt-oss-20b", "meta", {"method": "qlora", "seq": 1024, "lora_target": "attn"}),
    # DeepSeek-V3 with 5 of its 61 layers (3 dense, 2 routed: 256 fused experts each, MLA attention)
    "deepseek-v3 5 layers qlora seq512": (
        "deepseek-v3",
        "meta",
        {"method": "qlora", "seq": 512, "lora_target": "attn"},
        {"num_hidden_layers": 5},
    ),
    # all-linear reaches the router and experts (PEFT target_parameters): merged weights and their gradients
    "deepseek-v3 5 layers lora all-linear seq512": (
        "deepseek-v3",
        "fake",
        {"method": "lora", "seq": 512, "lora_target": "all-linear", "lora_dropout": 0.0},
        {"num_hidden_layers": 5},
    ),
    # GLM-4.7-Flash with 3 of its 47 layers (1 dense, 2 routed): MLA with v_head_dim = qk head dim (flash SDPA)
    "glm-4.7-flash 3 layers qlora seq1024": (
        "glm-4.7-flash",
        "meta",
        {"method": "qlora", "seq": 1024, "lora_target": "attn"},
        {"num_hidden_layers": 3},
    ),
    # Qwen3.5: 24 gated DeltaNet layers (transformers' torch fallback, 8 chunks of 64) and 8 gated attention layers
    # Gemma 4 with 6 of its layers (5 sliding, 1 global of head_dim 512 with k = v), seq 2048 past the 1024 window;
    # 26B-A4B: the MoE block beside the MLP (128 experts, top 8)
    "gemma-4-31b 6 layers lora seq2048": (
        "gemma-4-31b", "fake", {"method": "lora", "seq": 2048}, {"num_hidden_layers": 6, "layer_types": GEMMA4_6},
    ),
    "gemma-4-31b 6 layers qlora seq2048": (
        "gemma-4-31b", "meta", {"method": "qlora", "seq": 2048}, {"num_hidden_layers": 6, "layer_types": GEMMA4_6},
    ),
    "gemma-4-26b-a4b 6 layers lora seq2048": (
        "gemma-4-26b-a4b",
        "fake",
        {"method": "lora", "seq": 2048, "lora_target": "attn"},
        {"num_hidden_layers": 6, "layer_types": GEMMA4_6},
    ),
    "qwen3.5-4b lora seq512": ("qwen3.5-4b", "fake", {"method": "lora", "seq": 512}),
    "qwen3.5-4b lora seq512 ckpt": ("qwen3.5-4b", "fake", {"method": "lora", "seq": 512, "grad_ckpt": True}),
    # Qwen3.5-MoE 35B-A3B with 4 of its 40 layers (3 gated DeltaNet, 1 gated attention), each a sparse block of
    # 256 experts (top 8) + a shared expert: LoRA all-linear (the shared expert and its gate; the experts frozen)
    "qwen3.5-35b-a3b 4 layers lora seq512": (
        "qwen3.5-35b-a3b",
        "fake",
        {"method": "lora", "seq": 512},
        {"num_hidden_layers": 4, "layer_types": ["linear_attention"] * 3 + ["full_attention"]},
    ),
    # and QLoRA on the meta device (all-linear: the shared expert in 4-bit, the experts fp32 after kbit prep)
    "qwen3.5-35b-a3b 4 layers qlora seq512": (
        "qwen3.5-35b-a3b",
        "meta",
        {"method": "qlora", "seq": 512},
        {"num_hidden_layers": 4, "layer_types": ["linear_attention"] * 3 + ["full_attention"]},
    ),
    "qwen3.5-35b-a3b 4 layers qlora seq512 no-ckpt": (
        "qwen3.5-35b-a3b",
        "meta",
        {"method": "qlora", "seq": 512, "grad_ckpt": False},
        {"num_hidden_layers": 4, "layer_types": ["linear_attention"] * 3 + ["full_attention"]},
    ),
    # OLMo 2: post-norm layers (output norms before the residual adds, fp32 q / k norms over the projections);
    # checkpointed, the bottom layer's output-norm backward or its recompute peaks
    "olmo-2-7b lora seq512 ckpt": ("olmo-2-7b", "fake", {"method": "lora", "seq": 512, "grad_ckpt": True}),
    "olmo-2-7b qlora seq512": ("olmo-2-7b", "meta", {"method": "qlora", "seq": 512}),
    "olmo-2-7b full seq512 ckpt": ("olmo-2-7b", "fake", {"method": "full", "seq": 512, "grad_ckpt": True}),
    # 4 of its 32 layers and an 8192-token vocabulary: the layers' moments peak, not the logits'
    "olmo-2-7b 4 layers lora seq2048 ckpt": (
        "olmo-2-7b",
        "fake",
        {"method": "lora", "seq": 2048, "grad_ckpt": True},
        {"num_hidden_layers": 4, "vocab_size": 8192},
    ),
    "olmo-2-7b 4 layers qlora seq2048": (
        "olmo-2-7b",
        "meta",
        {"method": "qlora", "seq": 2048},
        {"num_hidden_layers": 4, "vocab_size": 8192},
    ),
    # SmolLM3-3B: every 4th layer NoPE, tied embeddings
    "smollm3-3b qlora seq1024": ("smollm3-3b", "meta", {"method": "qlora", "seq": 1024}),
    "mistral-7b qlora seq4096 window": ("mistral-7b", "meta", {"method": "qlora", "seq": 4096}),
    "mistral-7b qlora seq4096 window no-ckpt": (
        "mistral-7b",
        "meta",
        {"method": "qlora", "seq": 4096, "grad_ckpt": False},
    ),
    # Falcon-7B: FalconLinear stays fp32 under QLoRA (bitsandbytes skips the subclass; kbit prep upcasts it), and
    # without checkpointing every layer's mm saves its weights' bf16 autocast copy (+0.46 %; with it -0.001 %)
    "falcon-7b lora seq512": ("falcon-7b", "fake", {"method": "lora", "seq": 512}),
    "falcon-7b qlora seq512": ("falcon-7b", "meta", {"method": "qlora", "seq": 512}),
    "falcon-7b qlora seq512 no-ckpt": ("falcon-7b", "meta", {"method": "qlora", "seq": 512, "grad_ckpt": False}),
}
