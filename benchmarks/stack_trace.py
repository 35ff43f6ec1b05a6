"""Trace the allocation differences between library releases on tiny configs (CPU), standalone (imports no
vramplan): the figures tests/spec/test_stack.py holds. Run it with the python of a throwaway venv holding an
older release, and with the current environment, and compare:

    python -m venv /tmp/venv-old && /tmp/venv-old/bin/pip install torch==2.13.0 numpy accelerate \
        transformers==4.48.3 peft==0.11.1 bitsandbytes==0.43.1
    /tmp/venv-old/bin/python benchmarks/stack_trace.py logits layer matmul4bit adapters step
    python benchmarks/stack_trace.py logits layer matmul4bit adapters step

Live bytes are tracked per storage (a TorchDispatchMode registering every op output's storage, with a weak
reference to know when it dies); saved tensors through saved_tensors_hooks (unique storages).
"""

from __future__ import annotations

import json
import sys

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode


class Live(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.storages = {}  # key -> (weakref, nbytes)
        self.peak = 0
        self.marks = {}

    def register(self, t):
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            key = st._cdata
            if key not in self.storages:
                self.storages[key] = (StorageWeakRef(st), st.nbytes())

    def live(self):
        dead = [k for k, (ref, _) in self.storages.items() if ref.expired()]
        for k in dead:
            del self.storages[k]
        return sum(n for _, n in self.storages.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            self.register(t)
        self.peak = max(self.peak, self.live())
        return out

    def reset_peak(self):
        self.peak = self.live()


def register_existing(tracker, *tensors):
    for t in tensors:
        tracker.register(t)


def tiny_llama(vocab=32000, hidden=16, heads=4, kv_heads=4, layers=1, inter=32):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(torch.bfloat16)


def trace_logits(batch=2, seq=64, vocab=32000):
    """LoRA-free, frozen model except the final norm (so backward runs through the loss): logits figures."""
    model = tiny_llama(vocab=vocab)
    for p in model.parameters():
        p.requires_grad_(False)
    model.model.norm.weight.requires_grad_(True)
    ids = torch.randint(0, vocab, (batch, seq))
    tr = Live()
    marks = {}
    with tr:
        register_existing(tr, *model.parameters(), ids)

        def pre(mod, args):
            marks["head_start"] = tr.live()
            tr.reset_peak()

        h = model.lm_head.register_forward_pre_hook(pre)
        out = model(input_ids=ids, labels=ids)
        marks["forward_peak"] = tr.peak - marks["head_start"]
        loss = out.loss
        marks["logits_dtype"] = str(out.logits.dtype)
        del out
        marks["saved"] = tr.live() - marks["head_start"]
        start = tr.live()
        tr.reset_peak()
        loss.backward()
        marks["backward_peak"] = tr.peak - start + marks["saved"]
        h.remove()
    return marks


def trace_adapters(dtype=torch.bfloat16):
    """get_peft_model on a bf16 base: bytes of the trainable (adapter) parameters, their dtypes."""
    from peft import LoraConfig, get_peft_model

    model = tiny_llama(vocab=128, hidden=64, inter=128)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    trainable = [p for p in model.parameters() if p.requires_grad]
    return {
        "adapter_params": sum(p.numel() for p in trainable),
        "adapter_bytes": sum(p.numel() * p.element_size() for p in trainable),
        "dtypes": sorted({str(p.dtype) for p in trainable}),
    }


def trace_matmul4bit(tokens=256, in_features=64, out_features=128):
    """The real Linear4bit.forward / MatMul4Bit on a CPU weight: what stays alive after forward beyond the
    input and output. 0.43.1's dequantize_4bit is CUDA-only: replaced by a stand-in returning a dense weight
    of the right shape (the kernel allocates that too, and frees it before MatMul4Bit returns)."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    dense = torch.randn(out_features, in_features, dtype=torch.bfloat16)
    try:
        lin = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
        lin.weight = bnb.nn.Params4bit(dense.float(), requires_grad=False, quant_type="nf4")
        lin.weight = lin.weight._quantize("cpu") if hasattr(lin.weight, "_quantize") else lin.weight
        qs = lin.weight.quant_state
        real = qs is not None
    except Exception:
        real = False
    if not real:
        blocks = out_features * in_features // 64
        qs = F.QuantState(
            absmax=torch.ones(blocks),
            shape=torch.Size([out_features, in_features]),
            code=torch.zeros(16),
            blocksize=64,
            quant_type="nf4",
            dtype=torch.bfloat16,
        )
        packed = torch.zeros(out_features * in_features // 2, 1, dtype=torch.uint8)
        lin = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
        lin.weight = (
            bnb.nn.Params4bit(packed, requires_grad=False, quant_state=qs, quant_type="nf4", bnb_quantized=True)
            if "bnb_quantized" in bnb.nn.Params4bit.__new__.__code__.co_varnames
            else bnb.nn.Params4bit(packed, requires_grad=False, quant_state=qs, quant_type="nf4")
        )
        lin.weight.quant_state = qs
        F.dequantize_4bit = lambda B, quant_state=None, *a, **k: (dense.t() if B.shape[0] == 1 else dense).clone()
        import bitsandbytes.autograd._functions as fn

        fn.F.dequantize_4bit = F.dequantize_4bit
    results = {"real_kernel": real}
    cases = [
        (f"{label}_{dt}", ckpt, dt)
        for dt in ("fp32", "bf16")
        for label, ckpt in (("plain", None), ("reentrant", True), ("non_reentrant", False))
    ]
    for label, ckpt, dt in cases:
        if hasattr(lin, "compute_type_is_set"):
            lin.compute_type_is_set = getattr(lin, "_vp_initial_set", lin.compute_type_is_set)
            lin._vp_initial_set = lin.compute_type_is_set
            lin.compute_dtype = torch.bfloat16
        x0 = torch.randn(tokens, in_features, dtype=torch.float32, requires_grad=True)  # fp32: kbit prep residual
        dtype = torch.float32 if dt == "fp32" else torch.bfloat16

        def block(x0, dtype=dtype):
            x = x0.to(dtype) * 1.0  # a layer's inner activation (the norm output), not referenced after
            return lin(x)

        tr = Live()
        with tr:
            register_existing(tr, x0, dense, lin.weight, *([qs.absmax] if qs is not None else []))
            before = tr.live()
            if ckpt is None:
                y = block(x0)
            else:
                from torch.utils.checkpoint import checkpoint

                y = checkpoint(block, x0, use_reentrant=ckpt)
            after = tr.live()
        results[label] = after - before - y.untyped_storage().nbytes()
        results[label + "_kept"] = sorted(
            n for k, (ref, n) in tr.storages.items() if not ref.expired() and k != y.untyped_storage()._cdata
        )
        results[label + "_compute_dtype"] = str(getattr(lin, "compute_dtype", None))
        results[label + "_ctx_tensors"] = [
            None
            if t is None
            else [list(t.shape), str(t.dtype), t.untyped_storage()._cdata in tr.storages, t.untyped_storage().nbytes()]
            for t in getattr(y.grad_fn, "tensors", ())
        ]
        ctx = y.grad_fn
        results[label + "_grad_fn"] = type(ctx).__name__
        del y
    return results


def trace_layer_saved(kv_heads=2, batch=2, seq=32, hidden=64, heads=8):
    """One decoder layer of a GQA llama, bf16 weights, LoRA-free but the input requires grad: the bytes autograd
    saves (unique storages) and the shapes saved by SDPA."""
    model = tiny_llama(vocab=128, hidden=hidden, heads=heads, kv_heads=kv_heads, inter=128)
    layer = model.model.layers[0]
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(batch, seq, hidden, dtype=torch.bfloat16, requires_grad=True)
    pos = torch.arange(seq)[None].expand(batch, -1)
    saved = {}

    def pack(t):
        st = t.untyped_storage()
        saved[st._cdata] = (st.nbytes(), tuple(t.shape), str(t.dtype))
        return t

    kwargs = {}
    if hasattr(model.model, "rotary_emb"):
        kwargs["position_embeddings"] = model.model.rotary_emb(x, pos)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x, position_ids=pos, **kwargs)
    return {
        "saved_bytes": sum(n for n, _, _ in saved.values()),
        "saved": sorted([list(v) for v in saved.values()], key=lambda v: -v[0]),
    }


def trace_step(batch=2, seq=128, vocab=4096, hidden=128, heads=8, kv_heads=2, inter=256, layers=2):
    """A tiny llama LoRA step (r 8, all linear layers, dropout 0) on bf16 weights without autocast, AdamW
    (foreach=False: no step temporaries), two steps: the peak of the second (steady state: states exist)."""
    from peft import LoraConfig, get_peft_model

    model = tiny_llama(vocab=vocab, hidden=hidden, heads=heads, kv_heads=kv_heads, layers=layers, inter=inter)
    model = get_peft_model(
        model,
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, foreach=False)
    ids = torch.randint(0, vocab, (batch, seq))
    out = {}
    tr = Live()
    with tr:
        register_existing(tr, *model.parameters(), *model.buffers(), ids)
        for step in range(2):
            tr.reset_peak()
            o = model(input_ids=ids, labels=ids)
            loss = o.loss
            del o
            out[f"step{step}_forward_peak"] = tr.peak
            out[f"step{step}_after_forward"] = tr.live()
            tr.reset_peak()
            loss.backward()
            del loss
            out[f"step{step}_backward_peak"] = tr.peak
            tr.reset_peak()
            opt.step()
            opt.zero_grad(set_to_none=True)
            out[f"step{step}_step_peak"] = tr.peak
        out["after"] = tr.live()
    out["adapter_bytes"] = sum(p.numel() * p.element_size() for p in params)
    return out


def trace_generate(prompt=256, vocab=32000):
    """model.generate(max_new_tokens=1, do_sample=True), batch 1: the live-bytes peak above the weights."""
    model = tiny_llama(vocab=vocab, hidden=64, heads=8, kv_heads=2, layers=1, inter=128).eval()
    model.generation_config.pad_token_id = 0
    ids = torch.randint(0, vocab, (1, prompt))
    tr = Live()
    with torch.no_grad(), tr:
        register_existing(tr, *model.parameters(), *model.buffers(), ids)
        base = tr.live()
        tr.reset_peak()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=True, top_k=0, top_p=1.0, temperature=1.0)
    return {"prefill_peak_over_weights": tr.peak - base}


def trace_defaults():
    """The checkpointing kwargs of gradient_checkpointing_enable() and TrainingArguments' default optim."""
    import tempfile

    from transformers import TrainingArguments

    model = tiny_llama(vocab=128, hidden=16, inter=32)
    model.gradient_checkpointing_enable()
    layer = model.model.layers[0]
    func = getattr(layer, "_gradient_checkpointing_func", None) or model.model._gradient_checkpointing_func
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), report_to=[])
    return {"checkpoint_kwargs": dict(func.keywords), "default_optim": str(args.optim)}


if __name__ == "__main__":
    import importlib.metadata as md

    versions = {p: md.version(p) for p in ("torch", "transformers", "peft", "bitsandbytes")}
    what = sys.argv[1:] or ["logits", "adapters", "matmul4bit", "layer"]
    out = {"versions": versions}
    for w in what:
        try:
            out[w] = {
                "logits": trace_logits,
                "adapters": trace_adapters,
                "matmul4bit": trace_matmul4bit,
                "layer": trace_layer_saved,
                "step": trace_step,
                "generate": trace_generate,
                "defaults": trace_defaults,
            }[w]()
        except Exception as e:  # report and continue
            import traceback

            out[w] = {"error": repr(e), "tb": traceback.format_exc()[-1500:]}
    print(json.dumps(out, indent=1))
