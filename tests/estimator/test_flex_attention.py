"""Flex attention (`--attn flex_attention`, axolotl's `attn_implementation: flex_attention`): what it saves,
held to a trace of transformers 5.24's `flex_attention_forward` over torch 2.13's flex attention, compiled.

transformers compiles flex attention (integrations/flex_attention.py `WrappedFlexAttention`); the compiled
graph keeps what `flex_attention_backward` reads: q, k, v, the output and the fp32 logsumexp (B·heads·S), plus
the BlockMask's int32 block tables. The eager `FlexAttentionAutogradOp` would also save max_scores; the
compiled one does not. torch refuses flex attention's backward on CPU in its front end only
(nn/attention/flex_attention.py `_validate_device`), so the trace skips that check; the backend is
`aot_eager_decomp_partition` (AOTAutograd with the min-cut partitioner inductor uses, without inductor's CPU
code generation). When the head count is not a power of two, transformers repeats k and v to every head first.
"""

from __future__ import annotations

import pytest

from tests.oracle.grid import BASE, SMALL_LLAMA
from vramplan.estimator.activations import _walk_layer
from vramplan.estimator.walk import walk_settings
from vramplan.spec import model_spec_from_config, resolve_train

B, S, D = 2, 256, 32  # batch, sequence, head_dim of the traced call (S = two 128-token blocks)


def _traced_saved_bytes(heads: int, kv_heads: int) -> tuple[int, int]:
    """(bytes of the floating-point tensors the compiled flex attention keeps for backward, of its int32 block
    tables) for q (B, heads, S, D) and k, v (B, kv_heads, S, D), fp32, through transformers' integration."""
    torch = pytest.importorskip("torch")
    flex_module = pytest.importorskip("torch.nn.attention.flex_attention")
    integration = pytest.importorskip("transformers.integrations.flex_attention")
    from types import SimpleNamespace

    def causal(b, h, q, kv):
        return q >= kv

    block_mask = flex_module.create_block_mask(causal, B, None, S, S, device="cpu")
    compiled = torch.compile(flex_module.flex_attention, backend="aot_eager_decomp_partition")

    def compile_friendly(query, key, value, training=False, **kwargs):
        return compiled(query, key, value, **kwargs)

    q = torch.randn(B, heads, S, D, requires_grad=True)
    k = torch.randn(B, kv_heads, S, D, requires_grad=True)
    v = torch.randn(B, kv_heads, S, D, requires_grad=True)
    saved: dict[int, tuple[int, object]] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = (t.untyped_storage().nbytes(), t.dtype)
        return t

    patches = pytest.MonkeyPatch()
    patches.setattr(flex_module, "_validate_device", lambda *args: None)
    patches.setattr(integration, "compile_friendly_flex_attention", compile_friendly)
    try:
        module = SimpleNamespace(training=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            integration.flex_attention_forward(module, q, k, v, block_mask)
    finally:
        patches.undo()
    floats = sum(n for n, dtype in saved.values() if dtype.is_floating_point)
    tables = sum(n for n, dtype in saved.values() if dtype == torch.int32)
    return floats, tables


@pytest.mark.parametrize(
    ("heads", "kv_heads", "repeated"),
    [(8, 2, False), (12, 4, True)],  # 8 is a power of two: enable_gqa; 12 is not: repeat_kv
)
def test_compiled_flex_attention_saves_q_k_v_output_and_logsumexp(heads, kv_heads, repeated) -> None:
    floats, tables = _traced_saved_bytes(heads, kv_heads)
    k_v_heads = heads if repeated else kv_heads
    # q, k, v (k/v at the heads they reach the kernel with), output (B, heads, S, D) fp32, logsumexp (B, heads, S)
    expected = B * S * D * 4 * (heads + 2 * k_v_heads + heads) + B * heads * S * 4
    assert floats == expected  # exact: nothing else of B·S size is kept (no max_scores)
    blocks = S // 128
    assert 0 < tables <= 8 * B * blocks * blocks * 4  # the BlockMask's tables: B·⌈S/128⌉² int32, a few of them


def _layer_saved(config: dict, attn: str) -> float:
    m = model_spec_from_config(config, "flex-test")
    t = resolve_train(m, **{**BASE, "attn": attn})
    return _walk_layer(m, walk_settings(m, t), False, True, t.dtype).saved.real


def test_walk_flex_equals_flash_when_the_head_count_is_a_power_of_two() -> None:
    # SMALL_LLAMA: 8 heads, 4 KV heads: enable_gqa, the flash-attention saved set
    assert _layer_saved(SMALL_LLAMA, "flex_attention") == _layer_saved(SMALL_LLAMA, "flash_attention_2")


def test_walk_flex_repeats_k_v_when_the_head_count_is_not_a_power_of_two() -> None:
    config = {**SMALL_LLAMA, "hidden_size": 384, "num_attention_heads": 12, "num_key_value_heads": 4}
    q_dim, kv_dim = 12 * 32, 4 * 32  # head_dim 384 / 12
    # per token: k and v repeated to q_dim in bf16 (autocast) replace the kv_dim ones the kernel would save
    expected = 2 * 2 * (q_dim - kv_dim)
    assert _layer_saved(config, "flex_attention") - _layer_saved(config, "flash_attention_2") == expected


def test_flex_attention_never_gets_an_s_by_s_mask() -> None:
    # packing under SDPA builds a B·1·S·S mask; flex attention builds a BlockMask (walk.masked_layers)
    assert _layer_saved(SMALL_LLAMA, "flex_attention") == _layer_saved(SMALL_LLAMA, "flash_attention_2")
    m = model_spec_from_config(SMALL_LLAMA, "flex-test")
    packed = resolve_train(m, **{**BASE, "attn": "flex_attention", "packing": True})
    assert not walk_settings(m, packed).masked
