"""The contract every method keeps (docs/design.md), checked on a table of cases crossed with tests.

Each case is a list of method configs on a tiny model, plus its trainable-parameter count worked
out by hand from the tiny config (never by walking the model the way the library does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
from safetensors import safe_open

from peftlab.config import from_dict
from peftlab.errors import ConfigError, ModelError
from peftlab.methods import MethodConfig, apply_methods, peft_state
from peftlab.methods.alignment import ATTR, AlignmentConfig, HyperAlignmentAdapter
from peftlab.methods.hooks.bottleneck import BottleneckAdapter
from peftlab.methods.houlsby import HoulsbyConfig
from peftlab.methods.hyperformer import HyperFormerConfig
from peftlab.methods.unipelt import UniPELTConfig
from peftlab.methods.ia3 import IA3Config, IA3Linear, ia3_modules
from peftlab.methods.parallel import ParallelAdapterConfig
from peftlab.methods.pfeiffer import PfeifferConfig
from peftlab.methods.full import FullFineTuneConfig, ZeroShotConfig
from peftlab.methods.io import MANIFEST, WEIGHTS, load_adapter, save_adapter
from peftlab.methods.llama_adapter import LlamaAdapterConfig
from peftlab.methods.llama_adapter_v2 import LlamaAdapterV2Config
from peftlab.methods.lora import LoraConfig, LoraLinear, lora_modules, merge, unmerge
from peftlab.methods.p_tuning import PTuningConfig
from peftlab.methods.prompt_tuning import PromptTuningConfig
from peftlab.methods.prefix import PrefixConfig
from peftlab.methods.s2_attn import S2AttnConfig
from peftlab.methods.strided import StridedConfig
from peftlab.methods.adalora import AdaLoraConfig
from peftlab.methods.bitfit import BitFitConfig
from peftlab.methods.dora import DoraConfig
from peftlab.methods.ln_tuning import LNTuningConfig
from peftlab.methods.loha import LoHaConfig
from peftlab.methods.lokr import LoKrConfig
from peftlab.methods.oft import OFTConfig
from peftlab.methods.state import adapter_buffers
from peftlab.methods.vera import VeraConfig

from conftest import DECODER_TYPES, INIT_TEXT, build_decoder, build_gpt2, build_llama, build_t5, logits, tiny_tokenizer_dir

BASE = {"name": "tiny", "init": "random", "config": {"seed": 0}}


# ------------------------------------------------------------------------------------------------
# Expected trainable counts, from the config alone
# ------------------------------------------------------------------------------------------------
def _t5_dims(c):
    inner = c.num_heads * c.d_kv
    n_attn = c.num_layers + 2 * c.num_decoder_layers  # encoder self, decoder self + cross
    n_ffn = c.num_layers + c.num_decoder_layers
    return c.d_model, inner, n_attn, n_ffn, c.d_ff


def lora_t5_qv(r, stacks=("encoder", "decoder")):
    def count(c):
        d, inner, _, _, _ = _t5_dims(c)
        n_attn = (c.num_layers if "encoder" in stacks else 0) + (2 * c.num_decoder_layers if "decoder" in stacks else 0)
        return 2 * n_attn * r * (d + inner)  # q and v: d -> inner

    return count


def lora_t5_all(r):
    def count(c):
        d, inner, n_attn, n_ffn, ff = _t5_dims(c)
        attn = 3 * r * (d + inner) + r * (inner + d)  # q, k, v: d -> inner; o: inner -> d
        ffn = 3 * r * (d + ff)  # gated: wi_0, wi_1: d -> ff; wo: ff -> d
        return n_attn * attn + n_ffn * ffn

    return count


def lora_t5_wo(r):
    def count(c):
        d, _, _, n_ffn, ff = _t5_dims(c)
        return n_ffn * r * (ff + d)

    return count


def alignment(hidden=None):
    def count(c):
        d = c.d_model
        hyper = d * d + d if hidden is None else d * hidden + hidden + hidden * d + d
        return hyper + d + d  # + RMSNorm weight + gate

    return count


def lora_llama_qv(r):
    def count(c):
        d, hd = c.hidden_size, c.hidden_size // c.num_attention_heads
        q_out, v_out = c.num_attention_heads * hd, c.num_key_value_heads * hd
        return c.num_hidden_layers * r * ((d + q_out) + (d + v_out))

    return count


def bottleneck(rf, kinds, drop=0, lns=0, norms=False, blocks=None):
    """Bottleneck adapters: 2·d·m + m + d each (+ 2d per new LayerNorm, + d per trained base norm),
    one per adapted sub-layer kind (self/cross/ffn) in each block kept after AdapterDrop."""

    def count(c):
        d = getattr(c, "d_model", None) or c.hidden_size
        m = int(d // rf)
        per = 2 * d * m + m + d + 2 * d * lns + (d if norms else 0)
        if c.model_type == "t5":
            enc, dec = c.num_layers - drop, c.num_decoder_layers - drop
            n = sum(enc * (k != "cross") + dec for k in kinds)  # cross: decoder blocks only
        else:
            n = (c.num_hidden_layers - drop) * len(kinds)
        return per * (n if blocks is None else blocks * len(kinds))

    return count


def _prefix(p, hidden, sites, width):
    if not hidden:
        return sites * 2 * p * width  # a key and a value row per prefix position, per site
    return p * width + (width * hidden + hidden) + (hidden * sites * 2 * width + sites * 2 * width)


def prefix_t5(p, hidden=0, encoder_self=True, decoder_self=True, cross=True):
    def count(c):
        sites = c.num_layers * encoder_self + c.num_decoder_layers * (decoder_self + cross)
        return _prefix(p, hidden, sites, c.num_heads * c.d_kv)

    return count


def ia3_t5(stacks=("encoder", "decoder")):
    def count(c):
        inner = c.num_heads * c.d_kv
        enc = c.num_layers * (2 * inner + c.d_ff) if "encoder" in stacks else 0  # k, v: out; wo: in
        dec = c.num_decoder_layers * (2 * 2 * inner + c.d_ff) if "decoder" in stacks else 0  # self + cross
        return enc + dec

    return count


def prefix_llama(p, hidden=0):
    def count(c):
        width = c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)  # GQA: key/value heads
        return _prefix(p, hidden, c.num_hidden_layers, width)

    return count


def ia3_llama(c):
    kv = c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    return c.num_hidden_layers * (2 * kv + c.intermediate_size)  # k_proj, v_proj out; down_proj in


def llama_adapter(k, layers=None):
    def count(c):
        n = c.num_hidden_layers
        top = layers or (n - 2 if n > 2 else n)
        return top * (k * c.hidden_size + c.num_attention_heads)  # prompt + one gate per head

    return count


def llama_norms(c):
    return (2 * c.num_hidden_layers + 1) * c.hidden_size  # two RMSNorms per block + the final one


def llama_adapter_v2(k, layers=None):
    def count(c):
        hd = c.hidden_size // c.num_attention_heads
        outs = (c.num_attention_heads + 2 * c.num_key_value_heads) * hd + c.hidden_size  # q, k, v, o
        outs += 2 * c.intermediate_size + c.hidden_size  # gate, up, down
        bias_scale = 2 * (c.num_hidden_layers * outs + c.vocab_size)  # + the LM head
        return llama_adapter(k, layers)(c) + bias_scale + llama_norms(c)

    return count


def llama_embeddings_norms(c):
    return c.vocab_size * c.hidden_size + llama_norms(c)  # LongLoRA's "+embed, +norm" (untied LM head)


def base_norms(c):
    """Every norm of the base model (HyperFormer trains them, as the paper does)."""
    if c.model_type == "t5":  # 2 per encoder block, 3 per decoder block, 2 final (d each)
        return (2 * c.num_layers + 3 * c.num_decoder_layers + 2) * c.d_model
    return llama_norms(c)


def hyperformer(tasks, t, h, p, rf=32.0, kinds=("self", "ffn"), ln_before=False, ln_after=True, norms=True):
    """z_τ per task; per stack (one hypernetwork each): e_l per block, e_p per position, task
    projector 3t -> h -> p and its LayerNorm, one generator p -> G, G = 2·d·m + m + d + 2d per norm."""

    def count(c):
        d = _width(c)
        m = int(d // rf)
        stacks = [c.num_layers, c.num_decoder_layers] if c.model_type == "t5" else [c.num_hidden_layers]
        big_g = 2 * d * m + m + d + 2 * d * (ln_before + ln_after)
        per_net = [(n + len(kinds)) * t + (3 * t * h + h) + (h * p + p) + 2 * p + (p + 1) * big_g for n in stacks]
        return tasks * t + sum(per_net) + (base_norms(c) if norms else 0)

    return count


def unipelt(r=8, p=10, h=512, rf=16.0, modules=("lora", "prefix", "adapter")):
    """LoRA on q, v of every attention, prefix rows (through the MLP while training) in every
    attention, a Pfeiffer adapter after every FFN; each wrapped linear, attention and adapter also
    has its gate W_G: d -> 1 (d + 1 parameters)."""

    def count(c):
        d, t5 = _width(c), c.model_type == "t5"
        attentions = c.num_layers + 2 * c.num_decoder_layers if t5 else c.num_hidden_layers
        blocks = c.num_layers + c.num_decoder_layers if t5 else c.num_hidden_layers
        n = 0
        if "lora" in modules:
            n += (lora_t5_qv(r) if t5 else lora_llama_qv(r))(c) + 2 * attentions * (d + 1)
        if "prefix" in modules:
            n += (prefix_t5(p, h) if t5 else prefix_llama(p, h))(c) + attentions * (d + 1)
        if "adapter" in modules:
            n += bottleneck(rf, ("ffn",))(c) + blocks * (d + 1)
        return n

    return count


def none(c):
    return 0  # sparse attention has no parameters of its own


def _width(c):
    return c.d_model if c.model_type == "t5" else c.hidden_size


def prompt_tuning(n):
    return lambda c: n * _width(c)  # P: (n, d)


def p_tuning_mlp(n, k=None):
    def count(c):
        d = _width(c)
        k_ = k or d
        return n * d + (d * k_ + k_) + (k_ * k_ + k_) + (k_ * d + d)  # h + Linear(d,k), (k,k), (k,d)

    return count


def p_tuning_lstm(n, k, layers):
    def count(c):
        d = _width(c)
        # bidirectional LSTM: per direction and layer 4k x (input + k) weights + two 4k biases
        lstm = 2 * sum(4 * k * ((d if l == 0 else 2 * k) + k + 2) for l in range(layers))
        return n * d + lstm + (2 * k * 2 * k + 2 * k) + (2 * k * d + d)  # + MLP head (2k,2k), (2k,d)

    return count


def lora_gpt2(r, layers=("c_attn",)):
    """GPT-2's Conv1D layers (d -> out): c_attn 3d, attn.c_proj d, c_fc 4d, mlp.c_proj (4d -> d)."""
    def count(c):
        d = c.n_embd
        dims = {"c_attn": (d, 3 * d), "attn.c_proj": (d, d), "c_fc": (d, 4 * d), "mlp.c_proj": (4 * d, d)}
        return c.n_layer * sum(r * (i + o) for i, o in (dims[n] for n in layers))

    return count


def ia3_gpt2(c):
    return c.n_layer * (3 * c.n_embd + 4 * c.n_embd)  # c_attn output (q, k, v); mlp.c_proj input


def base_total(c):
    return sum(p.numel() for p in BUILDERS[c.model_type]().parameters())


BUILDERS = {"t5": build_t5, "llama": build_llama, "gpt2": build_gpt2,
             **{t: (lambda seed=0, t=t: build_decoder(t, seed)) for t in DECODER_TYPES}}


@dataclass
class Case:
    id: str
    family: str
    configs: Callable[[], list[MethodConfig]]
    counts: dict[str, Callable]  # method key -> expected count from the HF config
    identity: bool = True
    tags: set = field(default_factory=set)
    # parameters the methods add to the model, where some trainable ones are the base's own
    # (Houlsby's train_norms); None = all trainable ones are new
    injected: Callable | None = None

    def build(self, seed=0):
        return BUILDERS[self.family](seed)

    def apply(self, model):
        return apply_methods(model, self.configs())

    def batch(self, batches):
        """The family's batch; for multi-task methods (``batch_keys``) with each row's task, as a run's
        batches carry them (row i: task i mod T)."""
        batch = batches[self.family]
        tasks = [c.tasks for c in self.configs() if "task_ids" in getattr(c, "batch_keys", ())]
        if tasks:
            batch = {**batch, "task_ids": torch.arange(batch["input_ids"].shape[0]) % min(tasks)}
        return batch

    @property
    def has_lora(self):
        return "lora" in self.counts


CASES = [
    Case("lora-qv-t5", "t5", lambda: [LoraConfig(r=4, alpha=8)], {"lora": lora_t5_qv(4)}),
    Case("lora-all-linear-t5", "t5", lambda: [LoraConfig(r=2, targets=("all-linear",))], {"lora": lora_t5_all(2)}),
    Case(
        "lora-rslora-gaussian-t5", "t5", lambda: [LoraConfig(r=4, alpha=8, rslora=True, init="gaussian")],
        {"lora": lora_t5_qv(4)},
    ),
    Case(
        "lora-encoder-only-t5", "t5", lambda: [LoraConfig(r=4, stacks=("encoder",))],
        {"lora": lora_t5_qv(4, stacks=("encoder",))},
    ),
    Case("alignment-residual-t5", "t5", lambda: [AlignmentConfig()], {"alignment": alignment()}),
    Case("alignment-hidden8-t5", "t5", lambda: [AlignmentConfig(hidden=8)], {"alignment": alignment(8)}),
    Case(
        "lora+alignment-t5", "t5", lambda: [LoraConfig(r=4, alpha=8), AlignmentConfig()],
        {"lora": lora_t5_qv(4), "alignment": alignment()},
    ),
    Case(
        "lora-q+lora-wo-t5", "t5", lambda: [LoraConfig(r=4, targets=("q",)), LoraConfig(r=2, targets=("ffn_out",))],
        {"lora": lambda c: lora_t5_qv(4)(c) // 2, "lora#2": lora_t5_wo(2)},
    ),
    Case("lora-qv-llama", "llama", lambda: [LoraConfig(r=4, alpha=8)], {"lora": lora_llama_qv(4)}),
    Case("prefix-t5", "t5", lambda: [PrefixConfig(length=3)], {"prefix": prefix_t5(3)}, identity=False),
    Case("prefix-mlp-t5", "t5", lambda: [PrefixConfig(length=3, projection=16)], {"prefix": prefix_t5(3, 16)},
         identity=False),
    Case("prefix-encoder-only-t5", "t5", lambda: [PrefixConfig(length=2, decoder_self=False, cross=False)],
         {"prefix": prefix_t5(2, decoder_self=False, cross=False)}, identity=False),
    Case("prefix-llama", "llama", lambda: [PrefixConfig(length=3)], {"prefix": prefix_llama(3)}, identity=False),
    Case("prefix-mlp-llama", "llama", lambda: [PrefixConfig(length=3, projection=16)],
         {"prefix": prefix_llama(3, 16)}, identity=False),
    Case(
        "lora+prefix+alignment-t5", "t5", lambda: [LoraConfig(r=4), PrefixConfig(length=2), AlignmentConfig()],
        {"lora": lora_t5_qv(4), "prefix": prefix_t5(2), "alignment": alignment()}, identity=False,
    ),
    Case("llama-adapter-llama", "llama", lambda: [LlamaAdapterConfig(length=3)], {"llama_adapter": llama_adapter(3)}),
    Case("llama-adapter-top1-llama", "llama", lambda: [LlamaAdapterConfig(length=4, layers=1)],
         {"llama_adapter": llama_adapter(4, 1)}),
    Case("llama-adapter-v2-llama", "llama", lambda: [LlamaAdapterV2Config(length=3)],
         {"llama_adapter_v2": llama_adapter_v2(3)}, injected=lambda c: llama_adapter_v2(3)(c) - llama_norms(c)),
    Case(
        "lora+llama-adapter-v2-llama", "llama", lambda: [LoraConfig(r=4), LlamaAdapterV2Config(length=3)],
        {"lora": lora_llama_qv(4), "llama_adapter_v2": llama_adapter_v2(3)},
        injected=lambda c: lora_llama_qv(4)(c) + llama_adapter_v2(3)(c) - llama_norms(c),
    ),
    Case(
        "lora+prefix+llama-adapter-llama", "llama",
        lambda: [LoraConfig(r=4), PrefixConfig(length=2), LlamaAdapterConfig(length=3)],
        {"lora": lora_llama_qv(4), "prefix": prefix_llama(2), "llama_adapter": llama_adapter(3)}, identity=False,
    ),
    # Sparse attention (tiny batch: n = 8, so G = 4 is two groups shifted by 2; l = 2, s = 3)
    Case("s2-attn-llama", "llama", lambda: [S2AttnConfig(group_size=4)], {"s2_attn": none}, tags={"untrained"}),
    Case("lora+s2-attn-llama", "llama", lambda: [LoraConfig(r=4), S2AttnConfig(group_size=4)],
         {"lora": lora_llama_qv(4), "s2_attn": none}),
    Case("s2-attn+embeddings+norms-llama", "llama",
         lambda: [S2AttnConfig(group_fraction=0.5, train_embeddings=True, train_norms=True)],
         {"s2_attn": llama_embeddings_norms}, injected=none),  # all of them are the base's own
    Case("llama-adapter+s2-attn-llama", "llama", lambda: [LlamaAdapterConfig(length=3), S2AttnConfig(group_size=4)],
         {"llama_adapter": llama_adapter(3), "s2_attn": none}),
    Case("strided-llama", "llama", lambda: [StridedConfig(window=2, stride=3)], {"strided": none}, tags={"untrained"}),
    Case("lora+strided-llama", "llama", lambda: [LoraConfig(r=4), StridedConfig(window=2, stride=3)],
         {"lora": lora_llama_qv(4), "strided": none}),
    Case("full-t5", "t5", lambda: [FullFineTuneConfig()], {"full": base_total}),
    # Virtual tokens change outputs from the start (no identity at init; see test_virtual_tokens.py)
    *[
        Case(f"{cid}-{fam}", fam, make, counts, identity=False)
        for fam in ("t5", "llama")
        for cid, make, counts in [
            ("prompt-tuning-random", lambda: [PromptTuningConfig(num_virtual_tokens=4)], {"prompt_tuning": prompt_tuning(4)}),
            ("prompt-tuning-vocab", lambda: [PromptTuningConfig(num_virtual_tokens=3, init="vocab")],
             {"prompt_tuning": prompt_tuning(3)}),
            ("prompt-tuning-text", lambda: [PromptTuningConfig(num_virtual_tokens=9, init="text", init_text=INIT_TEXT,
                                                               tokenizer=tiny_tokenizer_dir())],
             {"prompt_tuning": prompt_tuning(9)}),
            ("p-tuning-mlp", lambda: [PTuningConfig(num_virtual_tokens=4)], {"p_tuning": p_tuning_mlp(4)}),
            ("p-tuning-mlp-hidden8", lambda: [PTuningConfig(num_virtual_tokens=4, hidden=8)],
             {"p_tuning": p_tuning_mlp(4, 8)}),
            ("p-tuning-lstm", lambda: [PTuningConfig(num_virtual_tokens=4, encoder="lstm", hidden=8)],
             {"p_tuning": p_tuning_lstm(4, 8, 2)}),
            ("p-tuning-folded", lambda: [PTuningConfig(num_virtual_tokens=4, folded=True)], {"p_tuning": prompt_tuning(4)}),
        ]
    ],
    Case(
        "lora+prompt-tuning+alignment-t5", "t5",
        lambda: [LoraConfig(r=4, alpha=8), PromptTuningConfig(num_virtual_tokens=4), AlignmentConfig()],
        {"lora": lora_t5_qv(4), "prompt_tuning": prompt_tuning(4), "alignment": alignment()}, identity=False,
    ),
    Case(
        "lora+p-tuning-llama", "llama", lambda: [LoraConfig(r=4, alpha=8), PTuningConfig(num_virtual_tokens=4, hidden=8)],
        {"lora": lora_llama_qv(4), "p_tuning": p_tuning_mlp(4, 8)}, identity=False,
    ),
    Case("zero-shot-t5", "t5", lambda: [ZeroShotConfig()], {"zero_shot": lambda c: 0}, tags={"untrained"}),
    # bottleneck adapters (d = 32: rf 16 -> m = 2, rf 2 -> m = 16) and IA3
    Case("houlsby-t5", "t5", lambda: [HoulsbyConfig()], {"houlsby": bottleneck(16, ("self", "ffn"))}),
    Case(
        "houlsby-ln-norms-cross-t5", "t5",
        lambda: [HoulsbyConfig(ln_before=True, ln_after=True, train_norms=True, sublayers=("self", "cross", "ffn"),
                               nonlinearity="gelu")],
        {"houlsby": bottleneck(16, ("self", "cross", "ffn"), lns=2, norms=True)},
        injected=bottleneck(16, ("self", "cross", "ffn"), lns=2),
    ),
    Case("pfeiffer-t5", "t5", lambda: [PfeifferConfig()], {"pfeiffer": bottleneck(16, ("ffn",))}),
    Case("pfeiffer-adapterdrop1-t5", "t5", lambda: [PfeifferConfig(drop_lowest=1)],
         {"pfeiffer": bottleneck(16, ("ffn",), drop=1)}),
    Case("parallel-t5", "t5", lambda: [ParallelAdapterConfig()], {"parallel": bottleneck(2, ("ffn",))}),
    Case("parallel-attn-encoder-layer1-t5", "t5",
         lambda: [ParallelAdapterConfig(sublayers=("self", "ffn"), stacks=("encoder",), layers=(1,), bottleneck=4)],
         {"parallel": bottleneck(8, ("self", "ffn"), blocks=1)}),
    Case("houlsby-llama", "llama", lambda: [HoulsbyConfig()], {"houlsby": bottleneck(16, ("self", "ffn"))}),
    Case("pfeiffer-adapterdrop1-llama", "llama", lambda: [PfeifferConfig(drop_lowest=1)],
         {"pfeiffer": bottleneck(16, ("ffn",), drop=1)}),
    Case("parallel-llama", "llama", lambda: [ParallelAdapterConfig(sublayers=("self", "ffn"))],
         {"parallel": bottleneck(2, ("self", "ffn"))}),
    Case("ia3-t5", "t5", lambda: [IA3Config()], {"ia3": ia3_t5()}),
    # the four-way composition (LoRA + prefix + Houlsby + alignment), and the attention methods
    # with a bottleneck adapter on a decoder
    Case(
        "lora+prefix+houlsby+alignment-t5", "t5",
        lambda: [LoraConfig(r=4), PrefixConfig(length=2), HoulsbyConfig(), AlignmentConfig()],
        {"lora": lora_t5_qv(4), "prefix": prefix_t5(2), "houlsby": bottleneck(16, ("self", "ffn")),
         "alignment": alignment()}, identity=False,
    ),
    Case(
        "prefix+llama-adapter+parallel-llama", "llama",
        lambda: [PrefixConfig(length=2, projection=8), LlamaAdapterConfig(length=3), ParallelAdapterConfig()],
        {"prefix": prefix_llama(2, 8), "llama_adapter": llama_adapter(3), "parallel": bottleneck(2, ("ffn",))},
        identity=False,
    ),
    Case("ia3-encoder-t5", "t5", lambda: [IA3Config(stacks=("encoder",))], {"ia3": ia3_t5(("encoder",))}),
    Case("ia3-llama", "llama", lambda: [IA3Config()], {"ia3": ia3_llama}),
    # HyperFormer++ (t = 8, h = 16, p = 8; d = 32: rf 32 -> m = 1, rf 8 -> m = 4); batches without
    # task_ids run task 0. init zero: identity; init normal (the reference's): not
    *[Case(f"hyperformer-{fam}", fam, lambda: [HyperFormerConfig(tasks=2, task_dim=8, hidden=16, projected=8)],
           {"hyperformer": hyperformer(2, 8, 16, 8)}, injected=lambda c: hyperformer(2, 8, 16, 8)(c) - base_norms(c))
      for fam in ("t5", "llama")],
    Case("hyperformer-cross-ln-before-normal-t5", "t5",
         lambda: [HyperFormerConfig(tasks=2, task_dim=8, hidden=16, projected=8, reduction_factor=8, ln_before=True,
                                    sublayers=("self", "cross", "ffn"), train_norms=False, init="normal")],
         {"hyperformer": hyperformer(2, 8, 16, 8, 8, ("self", "cross", "ffn"), ln_before=True, norms=False)},
         identity=False),
    Case("lora+hyperformer+alignment-t5", "t5",
         lambda: [LoraConfig(r=4, alpha=8), HyperFormerConfig(tasks=2, task_dim=8, hidden=16, projected=8,
                                                             ln_after=False), AlignmentConfig()],
         {"lora": lora_t5_qv(4), "hyperformer": hyperformer(2, 8, 16, 8, ln_after=False), "alignment": alignment()},
         injected=lambda c: lora_t5_qv(4)(c) + hyperformer(2, 8, 16, 8, ln_after=False)(c) - base_norms(c)
         + alignment()(c)),
    # UniPELT (prefix P = 3, MLP h = 16; m = d/16 = 2): prefix rows change outputs from the start;
    # LoRA (B = 0) and a zero_up adapter alone start at the base model
    *[Case(f"unipelt-{fam}", fam, lambda: [UniPELTConfig(prefix_length=3, prefix_projection=16)],
           {"unipelt": unipelt(p=3, h=16)}, identity=False) for fam in ("t5", "llama")],
    Case("unipelt-rows-llama", "llama", lambda: [UniPELTConfig(r=4, prefix_length=2, prefix_projection=0)],
         {"unipelt": unipelt(r=4, p=2, h=0)}, identity=False),
    Case("unipelt-lora-adapter-t5", "t5", lambda: [UniPELTConfig(modules=("lora", "adapter"), adapter_init="zero_up")],
         {"unipelt": unipelt(modules=("lora", "adapter"))}),
    Case("unipelt+alignment-t5", "t5", lambda: [UniPELTConfig(prefix_length=3, prefix_projection=16), AlignmentConfig()],
         {"unipelt": unipelt(p=3, h=16), "alignment": alignment()}, identity=False),
    # composition: LoRA + bottleneck + alignment, LoRA + IA3 on other layers, two bottlenecks on one FFN
    Case(
        "lora+houlsby+alignment-t5", "t5", lambda: [LoraConfig(r=4, alpha=8), HoulsbyConfig(), AlignmentConfig()],
        {"lora": lora_t5_qv(4), "houlsby": bottleneck(16, ("self", "ffn")), "alignment": alignment()},
    ),
    Case("lora-q+ia3-t5", "t5", lambda: [LoraConfig(r=4, alpha=8, targets=("q",)), IA3Config()],
         {"lora": lambda c: lora_t5_qv(4)(c) // 2, "ia3": ia3_t5()}),
    Case(
        "houlsby+parallel+alignment-t5", "t5", lambda: [HoulsbyConfig(), ParallelAdapterConfig(), AlignmentConfig()],
        {"houlsby": bottleneck(16, ("self", "ffn")), "parallel": bottleneck(2, ("ffn",)), "alignment": alignment()},
    ),
    Case("lora+parallel+ia3-llama", "llama",
         lambda: [LoraConfig(r=4, alpha=8, targets=("q",)), ParallelAdapterConfig(), IA3Config()],
         {"lora": lambda c: c.num_hidden_layers * 4 * 2 * c.hidden_size, "parallel": bottleneck(2, ("ffn",)),
          "ia3": ia3_llama}),
]
# GPT-2 (Conv1D linears, fused q/k/v) and the other LLaMA-layout decoders
CASES += [
    Case("lora-c_attn-gpt2", "gpt2", lambda: [LoraConfig(r=4, alpha=8, targets=("c_attn",))], {"lora": lora_gpt2(4)}),
    Case("lora-all-linear-gpt2", "gpt2", lambda: [LoraConfig(r=2, targets=("all-linear",))],
         {"lora": lora_gpt2(2, ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"))}),
    Case("lora-o+ffn_out-gpt2", "gpt2", lambda: [LoraConfig(r=2, targets=("o", "ffn_out"))],
         {"lora": lora_gpt2(2, ("attn.c_proj", "mlp.c_proj"))}),
    Case("ia3-gpt2", "gpt2", lambda: [IA3Config(targets=("qkv", "ffn_out"), feedforward=("ffn_out",))],
         {"ia3": ia3_gpt2}),
    Case("houlsby-gpt2", "gpt2", lambda: [HoulsbyConfig()], {"houlsby": bottleneck(16, ("self", "ffn"))}),
    Case("lora-qkv+ia3+parallel-gpt2", "gpt2",
         lambda: [LoraConfig(r=4, targets=("qkv",)), IA3Config(targets=("ffn_out",), feedforward=("ffn_out",)),
                  ParallelAdapterConfig()],
         {"lora": lora_gpt2(4), "ia3": lambda c: c.n_layer * 4 * c.n_embd, "parallel": bottleneck(2, ("ffn",))}),
    Case("full-gpt2", "gpt2", lambda: [FullFineTuneConfig()], {"full": base_total}),
    *[Case(f"lora-qv-{t}", t, lambda: [LoraConfig(r=4, alpha=8)], {"lora": lora_llama_qv(4)}) for t in DECODER_TYPES],
]


# The catalogue: DoRA, PiSSA / OLoRA (LoRA's inits), VeRA, AdaLoRA, LoHa, LoKr, OFT, BitFit, LN tuning
def _attn(c):
    """T5: attention modules (encoder self; decoder self + cross), their width; LLaMA: q and v widths."""
    if c.model_type == "t5":
        return c.num_layers + 2 * c.num_decoder_layers, c.num_heads * c.d_kv
    hd = c.hidden_size // c.num_attention_heads
    return c.num_hidden_layers, (c.num_attention_heads * hd, c.num_key_value_heads * hd)


def dora_qv(r):  # LoRA's A, B + a magnitude per output feature of q and v
    def count(c):
        n, w = _attn(c)
        if c.model_type == "t5":
            return lora_t5_qv(r)(c) + n * 2 * w
        return lora_llama_qv(r)(c) + n * sum(w)

    return count


def vera_qv(r):  # d: (r,), b: (out,) per layer
    def count(c):
        n, w = _attn(c)
        return n * 2 * (r + w) if c.model_type == "t5" else n * (2 * r + sum(w))

    return count


def adalora_qv(r):  # Q: (r, in), λ: (r,), P: (out, r) per layer
    def count(c):
        n, w = _attn(c)
        d = _width(c)
        return n * 2 * r * (d + w + 1) if c.model_type == "t5" else n * sum(r * (d + o + 1) for o in w)

    return count


def adalora_t5_all(r):
    def count(c):
        d, inner, n_attn, n_ffn, ff = _t5_dims(c)
        return n_attn * 4 * r * (d + inner + 1) + n_ffn * 3 * r * (d + ff + 1)  # wi_0, wi_1, wo: d <-> ff

    return count


def lokr_qv_r2(c):
    """32 = 4·8 (q, v on T5; q on LLaMA): W1 4×4 + W2 as (8×2)(2×8) = 48; LLaMA's v: 16 = 4·4 out,
    W1 4×4 + W2 (4×2)(2×8) = 40 (W2 full only where r >= max(b, d) / 2)."""
    n, _ = _attn(c)
    return n * 2 * 48 if c.model_type == "t5" else n * (48 + 40)


def oft_qv(s):  # (in / s) blocks of s(s-1)/2 per layer; every q and v reads d
    def count(c):
        n, _ = _attn(c)
        return n * 2 * (_width(c) // s) * s * (s - 1) // 2

    return count


def bitfit(c):  # one added bias per output feature of every linear layer in the blocks
    if c.model_type == "t5":
        d, inner, n_attn, n_ffn, ff = _t5_dims(c)
        return n_attn * (3 * inner + d) + n_ffn * (2 * ff + d)
    kv = c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    return c.num_hidden_layers * (2 * c.hidden_size + 2 * kv + 2 * c.intermediate_size + c.hidden_size)


CASES += [
    *[Case(f"{cid}-{fam}", fam, make, counts)
      for fam in ("t5", "llama")
      for cid, make, counts in [
          ("dora", lambda: [DoraConfig(r=4, alpha=8)], {"dora": dora_qv(4)}),
          ("pissa", lambda: [LoraConfig(r=4, alpha=8, init="pissa")],
           {"lora": lora_t5_qv(4) if fam == "t5" else lora_llama_qv(4)}),
          ("olora-rslora", lambda: [LoraConfig(r=4, alpha=8, init="olora", rslora=True)],
           {"lora": lora_t5_qv(4) if fam == "t5" else lora_llama_qv(4)}),
          ("dora-pissa", lambda: [DoraConfig(r=2, init="pissa")], {"dora": dora_qv(2)}),
          ("vera", lambda: [VeraConfig(r=4)], {"vera": vera_qv(4)}),
          ("adalora", lambda: [AdaLoraConfig(r=3, target_r=2, targets=("q", "v"))], {"adalora": adalora_qv(3)}),
          ("loha", lambda: [LoHaConfig(r=2)], {"loha": lora_t5_qv(4) if fam == "t5" else lora_llama_qv(4)}),
          ("lokr", lambda: [LoKrConfig(r=2)], {"lokr": lokr_qv_r2}),
          ("oft", lambda: [OFTConfig(block_size=8)], {"oft": oft_qv(8)}),
          ("oft-exact", lambda: [OFTConfig(block_size=4, neumann_terms=0)], {"oft": oft_qv(4)}),
          ("bitfit", lambda: [BitFitConfig()], {"bitfit": bitfit}),
      ]],
    *[Case(f"ln-tuning-{fam}", fam, lambda: [LNTuningConfig()], {"ln_tuning": base_norms}, injected=none)
      for fam in ("t5", "llama")],  # the norms are the base's own: nothing added
    Case("adalora-all-linear-t5", "t5", lambda: [AdaLoraConfig(r=3, target_r=1)], {"adalora": adalora_t5_all(3)}),
    # compositions: each wraps other layers (a layer takes one wrapper); the norms are the base's own
    Case("dora-q+vera-v+ln-tuning-t5", "t5",
         lambda: [DoraConfig(r=2, targets=("q",)), VeraConfig(r=4, targets=("v",)), LNTuningConfig()],
         {"dora": lambda c: dora_qv(2)(c) // 2, "vera": lambda c: vera_qv(4)(c) // 2, "ln_tuning": base_norms},
         injected=lambda c: dora_qv(2)(c) // 2 + vera_qv(4)(c) // 2),
    Case("pissa-q+adalora-v+oft-o+bitfit-down-llama", "llama",
         lambda: [LoraConfig(r=2, init="pissa", targets=("q",)), AdaLoraConfig(r=3, target_r=2, targets=("v",)),
                  OFTConfig(block_size=8, targets=("o",)), BitFitConfig(targets=("ffn_out",))],
         {"lora": lambda c: c.num_hidden_layers * 2 * 64, "adalora": lambda c: c.num_hidden_layers * 3 * (32 + 16 + 1),
          "oft": lambda c: c.num_hidden_layers * 4 * 28, "bitfit": lambda c: c.num_hidden_layers * c.hidden_size}),
    Case("loha-q+lokr-v+prefix-t5", "t5", lambda: [LoHaConfig(r=2, targets=("q",)), LoKrConfig(r=2, targets=("v",)),
                                                     PrefixConfig(length=2)],
         {"loha": lambda c: lora_t5_qv(4)(c) // 2, "lokr": lambda c: lokr_qv_r2(c) // 2, "prefix": prefix_t5(2)},
         identity=False),
]
CATALOGUE = [c for c in CASES if any(k in c.counts for k in ("dora", "vera", "adalora", "loha", "lokr", "oft",
                                                             "bitfit", "ln_tuning")) or "pissa" in c.id]
TRAINED = [c for c in CASES if "untrained" not in c.tags]
LORA = [c for c in CASES if c.has_lora]


def cases(which):
    return pytest.mark.parametrize("case", which, ids=[c.id for c in which])


@pytest.fixture
def batches(t5_batch, llama_batch):
    return {"t5": t5_batch, "llama": llama_batch, "gpt2": llama_batch, **{t: llama_batch for t in DECODER_TYPES}}


def train_steps(model, batch, steps=3, lr=1e-2):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    model.eval()


def assert_changed(before, after, min_diff=1e-4):
    assert (before - after).abs().max() > min_diff, "training did not change the outputs"


# ------------------------------------------------------------------------------------------------
# Contract tests over the table
# ------------------------------------------------------------------------------------------------
@cases([c for c in CASES if c.identity])
def test_identity_at_init(case, batches):
    batch = batches[case.family]
    base = logits(case.build(), batch)
    model = case.build()
    case.apply(model)
    torch.testing.assert_close(logits(model, batch), base, atol=1e-5, rtol=0)


@cases(CASES)
def test_base_parameter_names_are_kept(case):
    base = dict(case.build().named_parameters())
    model = case.build()
    case.apply(model)
    adapted = dict(model.named_parameters())
    for name, p in base.items():
        assert name in adapted, f"base parameter {name} was renamed"
        assert adapted[name].shape == p.shape


@cases(CASES)
def test_only_method_parameters_train(case, batches):
    model = case.build()
    state = case.apply(model)
    trainable = set(state.trainable_names())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    loss = model(**case.batch(batches)).loss
    if not trainable:
        assert not loss.requires_grad
        return
    loss.backward()
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.grad is not None, f"{name} is trainable but got no gradient"
        else:
            assert p.grad is None, f"{name} is frozen but got a gradient"


@cases(CASES)
def test_trainable_counts_are_exact(case):
    model = case.build()
    base_n = sum(p.numel() for p in model.parameters())
    state = case.apply(model)
    expected = {key: fn(model.config) for key, fn in case.counts.items()}
    assert state.counts(model) == expected
    n = sum(expected.values())
    assert state.trainable_params(model) == n
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == n
    injected = 0 if case.id.startswith("full") else case.injected(model.config) if case.injected else n
    total = base_n + injected
    assert state.total_params == total
    summary = state.summary(model)
    head = f"trainable {n:,} / {total:,} ({100 * n / total:.2f}%)"
    assert summary.startswith(head), summary
    assert re.fullmatch(r"trainable [\d,]+ / [\d,]+ \(\d+\.\d\d%\)  \[.*\]", summary), summary
    for key, v in expected.items():
        assert f"{key} {v:,}" in summary


def test_summary_format_exact(tiny_t5):
    # Tiny T5: 53,696 base parameters; LoRA r=4 on q,v: 12 linears x 4 x (32 + 32) = 3,072.
    model = tiny_t5()
    state = apply_methods(model, [LoraConfig(r=4)])
    assert state.summary(model) == "trainable 3,072 / 56,768 (5.41%)  [lora 3,072]"


@cases(TRAINED)
def test_save_load_round_trip(case, batches, tmp_path):
    batch = case.batch(batches)
    model = case.build()
    state = case.apply(model)
    before = logits(model, batch)
    train_steps(model, batch)
    after = logits(model, batch)
    assert_changed(before, after)

    save_adapter(model, tmp_path, base_model=BASE)
    with safe_open(str(tmp_path / WEIGHTS), "pt") as f:
        # the trained tensors, and the frozen ones a method declares (PiSSA's A0, B0; VeRA's pair)
        assert set(f.keys()) == set(state.trainable_names()) | set(adapter_buffers(model))
        assert sum(f.get_tensor(k).numel() for k in state.trainable_names()) == state.trainable_params(model)
    assert (tmp_path / MANIFEST).exists()

    fresh = case.build()
    loaded = load_adapter(fresh, tmp_path, base_model=BASE)
    assert loaded.param_names == state.param_names
    assert [c.to_dict() for c in loaded.configs] == [c.to_dict() for c in state.configs]
    torch.testing.assert_close(logits(fresh, batch), after, atol=1e-6, rtol=0)


def test_zero_shot_round_trip_saves_nothing(tiny_t5, t5_batch, tmp_path):
    model = tiny_t5()
    apply_methods(model, [ZeroShotConfig()])
    save_adapter(model, tmp_path, base_model=BASE)
    with safe_open(str(tmp_path / WEIGHTS), "pt") as f:
        assert list(f.keys()) == []
    fresh = tiny_t5()
    load_adapter(fresh, tmp_path, base_model=BASE)
    torch.testing.assert_close(logits(fresh, t5_batch), logits(model, t5_batch), atol=0, rtol=0)


@cases(LORA)
def test_lora_merge_unmerge(case, batches):
    batch = batches[case.family]
    base_weights = {n: p.detach().clone() for n, p in case.build().named_parameters()}
    model = case.build()
    trained = set(case.apply(model).trainable_names())  # base weights a method trains (v2's norms) move
    train_steps(model, batch)
    mods = lora_modules(model)
    assert mods and all(m.lora_b.abs().max() > 0 for m in mods)
    unmerged = logits(model, batch)

    assert merge(model) == len(mods)
    assert all(m.merged for m in mods)
    merged_weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert any(not torch.equal(merged_weights[n], w) for n, w in base_weights.items())
    torch.testing.assert_close(logits(model, batch), unmerged, atol=1e-5, rtol=0)

    merge(model)  # merging twice is a no-op
    for n, p in model.named_parameters():
        assert torch.equal(p, merged_weights[n]), n

    assert unmerge(model) == len(mods)
    assert not any(m.merged for m in mods)
    params = dict(model.named_parameters())
    for n, w in base_weights.items():
        if n not in trained:
            torch.testing.assert_close(params[n], w, atol=1e-6, rtol=0, msg=n)
    torch.testing.assert_close(logits(model, batch), unmerged, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------
# Method-specific behaviour
# ------------------------------------------------------------------------------------------------
def test_lora_wraps_exactly_the_targeted_linears(tiny_t5, tiny_llama):
    t5 = tiny_t5()
    apply_methods(t5, [LoraConfig(targets=("q", "v"))])
    names = {n for n, m in t5.named_modules() if isinstance(m, LoraLinear)}
    assert names and {n.rsplit(".", 1)[-1] for n in names} == {"q", "v"}
    assert len(names) == 12
    llama = tiny_llama()
    apply_methods(llama, [LoraConfig(targets=("q", "v"))])
    names = {n for n, m in llama.named_modules() if isinstance(m, LoraLinear)}
    assert {n.rsplit(".", 1)[-1] for n in names} == {"q_proj", "v_proj"}
    assert len(names) == 4


def test_lora_rslora_scaling():
    import math

    from torch import nn

    plain = LoraLinear(nn.Linear(8, 8), r=4, alpha=8, dropout=0.0, init="kaiming", rslora=False)
    rs = LoraLinear(nn.Linear(8, 8), r=4, alpha=8, dropout=0.0, init="gaussian", rslora=True)
    assert plain.scaling == 2.0
    assert rs.scaling == pytest.approx(8 / math.sqrt(4))


def test_alignment_replace_is_not_identity(tiny_t5, t5_batch):
    base = logits(tiny_t5(), t5_batch)
    model = tiny_t5()
    apply_methods(model, [AlignmentConfig(mode="replace")])
    adapter = getattr(model.encoder, ATTR)
    assert adapter.gate is None
    assert (logits(model, t5_batch) - base).abs().max() > 1e-3


def _gated_alignment_model(make):
    model = make()
    if peft_state(model) is None:
        apply_methods(model, [AlignmentConfig()])
    adapter = getattr(model.encoder, ATTR)
    assert isinstance(adapter, HyperAlignmentAdapter)
    with torch.no_grad():
        adapter.gate.fill_(1.0)
        adapter.hyper.weight.normal_(std=0.1)
    return model, adapter


def test_alignment_hook_changes_encoder_outputs(tiny_t5, t5_batch):
    base = tiny_t5()
    model, _ = _gated_alignment_model(tiny_t5)
    enc_in = {k: t5_batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        b = base.get_encoder()(**enc_in).last_hidden_state
        a = model.get_encoder()(**enc_in).last_hidden_state
        a_tuple = model.get_encoder()(**enc_in, return_dict=False)[0]
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(a_tuple, a, atol=0, rtol=0)


def test_alignment_mask_excludes_padding(tiny_t5, t5_batch):
    # The hypernetwork conditions on the masked mean, so padded tokens must not move row 1's
    # real positions.
    model, _ = _gated_alignment_model(tiny_t5)
    enc = model.get_encoder()
    ids, mask = t5_batch["input_ids"][1:], t5_batch["attention_mask"][1:]
    other = ids.clone()
    other[0, 5:] = 77  # change only padded tokens
    with torch.no_grad():
        x = enc(input_ids=ids, attention_mask=mask).last_hidden_state[:, :5]
        y = enc(input_ids=other, attention_mask=mask).last_hidden_state[:, :5]
    torch.testing.assert_close(x, y, atol=1e-6, rtol=0)


def test_deep_copy_runs_its_own_alignment_adapter(tiny_t5, t5_batch):
    # The encoder hook must find the copy's adapter, not the original's (copy.deepcopy keeps
    # function objects, so a hook closing over the adapter would still run the original).
    import copy

    model = tiny_t5()
    apply_methods(model, [AlignmentConfig()])
    twin, adapter = _gated_alignment_model(lambda: copy.deepcopy(model))
    assert (logits(twin, t5_batch) - logits(model, t5_batch)).abs().max() > 1e-3
    calls = []
    adapter.register_forward_hook(lambda *a: calls.append(1))
    logits(twin, t5_batch)
    assert calls


def test_generate_runs_the_alignment_adapter(tiny_t5, t5_batch):
    base = tiny_t5()
    model, adapter = _gated_alignment_model(tiny_t5)
    calls = []
    adapter.register_forward_hook(lambda *a: calls.append(1))
    kwargs = dict(
        input_ids=t5_batch["input_ids"], attention_mask=t5_batch["attention_mask"], max_new_tokens=4,
        do_sample=False, output_scores=True, return_dict_in_generate=True,
    )
    with torch.no_grad():
        out_base = base.generate(**kwargs)
        out = model.generate(**kwargs)
    assert calls, "the alignment adapter did not run during generate()"
    assert out.sequences.shape[0] == 2
    assert (out.scores[0] - out_base.scores[0]).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
@cases([c for c in CASES if c.id in ('lora-qv-t5', 'alignment-residual-t5', 'full-t5', 'zero-shot-t5', 'houlsby-t5',
                                     'parallel-llama', 'ia3-t5', 'prefix-mlp-t5', 'llama-adapter-llama',
                                     'llama-adapter-v2-llama', 's2-attn-llama', 'prompt-tuning-random-t5',
                                     'p-tuning-lstm-llama', 'hyperformer-llama', 'unipelt-t5', 'dora-t5', 'pissa-llama',
                                     'vera-llama', 'adalora-t5', 'oft-llama', 'bitfit-t5', 'ln-tuning-llama')])
def test_applying_twice_raises(case):
    model = case.build()
    case.apply(model)
    with pytest.raises(ModelError, match="already applied"):
        case.apply(model)


def test_alignment_on_llama_names_the_family(tiny_llama):
    with pytest.raises(ModelError, match="llama"):
        apply_methods(tiny_llama(), [AlignmentConfig()])


def test_lora_targets_matching_nothing_lists_the_linears(tiny_t5):
    with pytest.raises(ModelError) as err:
        apply_methods(tiny_t5(), [LoraConfig(targets=("query",))])
    msg = str(err.value)
    assert "query" in msg
    names = re.search(r"named: ([^(]*)", msg).group(1)
    assert {"q", "wo"} <= {n.strip() for n in names.split(",")}


def test_a_linear_wrapped_by_an_earlier_method_is_named_not_skipped(tiny_t5):
    with pytest.raises(ModelError, match=r"lora: .*SelfAttention.q is already wrapped \(LoraLinear\)"):
        apply_methods(tiny_t5(), [LoraConfig(r=2, targets=("q", "v")), LoraConfig(r=2, targets=("q", "k"))])


def test_lora_unknown_stack_raises(tiny_t5):
    with pytest.raises(ModelError, match="encdoer"):
        apply_methods(tiny_t5(), [LoraConfig(stacks=("encdoer",))])


def test_load_onto_another_base_raises(tiny_t5, tmp_path):
    model = tiny_t5()
    apply_methods(model, [LoraConfig(r=4)])
    saved = {"name": "tiny-t5", "init": "random", "config": {"d_model": 32}}
    other = {"name": "tiny-t5", "init": "random", "config": {"d_model": 64}}
    save_adapter(model, tmp_path, base_model=saved)
    with pytest.raises(ModelError) as err:
        load_adapter(tiny_t5(), tmp_path, base_model=other)
    msg = str(err.value)
    assert "'d_model': 32" in msg and "'d_model': 64" in msg


def test_load_without_manifest_raises(tiny_t5, tmp_path):
    with pytest.raises(ModelError, match="no peftlab adapter"):
        load_adapter(tiny_t5(), tmp_path)


def test_save_without_methods_raises(tiny_t5, tmp_path):
    with pytest.raises(ModelError, match="no peftlab methods"):
        save_adapter(tiny_t5(), tmp_path, base_model=BASE)


# ------------------------------------------------------------------------------------------------
# Config dispatch
# ------------------------------------------------------------------------------------------------
def test_config_dispatch_by_name():
    cfg = from_dict(MethodConfig, {"name": "lora", "r": 4, "targets": ["q", "k"]})
    assert cfg == LoraConfig(r=4, targets=("q", "k"))
    assert isinstance(from_dict(MethodConfig, "alignment"), AlignmentConfig)
    assert isinstance(from_dict(MethodConfig, {"name": "zero_shot"}), ZeroShotConfig)
    assert from_dict(MethodConfig, {"name": "alignment", "hidden": 8}).hidden == 8


@pytest.mark.parametrize("cfg", [LoraConfig(r=4, targets=("all-linear",)), AlignmentConfig(hidden=8), FullFineTuneConfig(),
                                 HoulsbyConfig(sublayers=("ffn",), layers=(0, 1), drop_lowest=1, train_norms=True),
                                 PfeifferConfig(bottleneck=4), ParallelAdapterConfig(scaling=2.0),
                                 IA3Config(stacks=("decoder",)),
                                 HyperFormerConfig(tasks=3, sublayers=("ffn",), layers=(1,), init="normal"),
                                 UniPELTConfig(modules=("prefix", "adapter"), cross=False, adapter_init="zero_up"),
                                 PromptTuningConfig(num_virtual_tokens=5, init="text", init_text="x"),
                                 PTuningConfig(encoder="lstm", hidden=16, lstm_layers=1)])
def test_config_round_trips_through_to_dict(cfg):
    assert from_dict(MethodConfig, cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: LoraConfig(init="xavier"), "init"),
        (lambda: LoraConfig(targets="q"), "targets"),
        (lambda: LoraConfig(targets=()), "targets"),
        (lambda: LoraConfig(dropout=1.0), "dropout"),
        (lambda: AlignmentConfig(mode="gated"), "mode"),
        (lambda: AlignmentConfig(hidden=0), "hidden"),
        (lambda: PromptTuningConfig(num_virtual_tokens=0), "num_virtual_tokens"),
        (lambda: PromptTuningConfig(init="sample"), "init"),
        (lambda: PromptTuningConfig(init="text"), "init_text"),
        (lambda: PromptTuningConfig(init_text="hello"), "init_text"),
        (lambda: PromptTuningConfig(init="vocab", init_std=0.1), "init_std"),
        (lambda: PromptTuningConfig(init_std=-1.0), "init_std"),
        (lambda: PTuningConfig(num_virtual_tokens=0), "num_virtual_tokens"),
        (lambda: PTuningConfig(encoder="gru"), "encoder"),
        (lambda: PTuningConfig(hidden=0), "hidden"),
        (lambda: PTuningConfig(lstm_layers=3), "lstm_layers"),
        (lambda: PTuningConfig(encoder="lstm", dropout=0.1, lstm_layers=1), "dropout"),
        (lambda: HoulsbyConfig(reduction_factor=0), "reduction_factor"),
        (lambda: HoulsbyConfig(bottleneck=0), "bottleneck"),
        (lambda: HoulsbyConfig(nonlinearity="sigmoidd"), "nonlinearity"),
        (lambda: PfeifferConfig(sublayers=("mlp",)), "sublayers"),
        (lambda: PfeifferConfig(sublayers="ffn"), "sublayers"),
        (lambda: ParallelAdapterConfig(scaling=0.0), "scaling"),
        (lambda: ParallelAdapterConfig(init="xavier"), "init"),
        (lambda: HoulsbyConfig(dropout=1.0), "dropout"),
        (lambda: HoulsbyConfig(layers=(-1,)), "layers"),
        (lambda: HoulsbyConfig(drop_lowest=-1), "drop_lowest"),
        (lambda: IA3Config(targets="k"), "targets"),
        (lambda: IA3Config(targets=()), "targets"),
        (lambda: IA3Config(targets=("all-linear",)), "targets"),
        (lambda: IA3Config(targets=("k", "v"), feedforward=("ffn_out",)), "feedforward"),
    ],
)
def test_configs_validate_on_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "data, match",
    [
        ({"name": "lorra"}, "did you mean 'lora'"),
        ({"name": "lora", "alhpa": 3}, "did you mean 'alpha'"),
        ({"name": "lora", "r": 0}, "r must be >= 1"),
        ({"name": "lora", "r": "four"}, "expected an integer"),
        ({"name": "alignment", "mode": "gated"}, "residual"),
        ({"name": "prompt_tuning", "num_virtual_tokens": 0}, r"^num_virtual_tokens: .*>= 1"),
        ({"name": "p_tuning", "encoder": "gru"}, "encoder: expected one of 'mlp'"),
        ({"name": "prompt_tunning"}, "did you mean 'prompt_tuning'"),
        ({"name": "houlsby", "reduction_factr": 8}, "did you mean 'reduction_factor'"),
        ({"name": "pfeiffer", "drop_lowest": -2}, "drop_lowest: drop_lowest must be >= 0, got -2"),
        ({"name": "parallel", "sublayers": ["attn"]}, "sublayers must name some of self, cross, ffn"),
        ({"name": "ia3", "feedforward": ["q"]}, r"feedforward: feedforward \['q'\] must also be in targets"),
    ],
)
def test_config_errors(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(MethodConfig, data)


def test_a_failed_apply_leaves_the_model_exactly_as_given(tiny_t5):
    """All or nothing: LoRA and the alignment adapter are injected, then a third method fails;
    the model has its original modules, hooks, trainable flags and outputs, and takes methods again."""
    model = tiny_t5()
    model.lm_head.weight.requires_grad_(True)
    before_types = {n: type(m) for n, m in model.named_modules()}
    before_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    ids = torch.randint(5, 100, (2, 8))
    with torch.no_grad():
        before = model(input_ids=ids, decoder_input_ids=ids).logits
    with pytest.raises(ModelError, match="query"):
        apply_methods(model, [LoraConfig(r=4), AlignmentConfig(), LoraConfig(targets=("query",))])
    assert {n: type(m) for n, m in model.named_modules()} == before_types
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before_flags
    assert not model.encoder._forward_hooks and peft_state(model) is None
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, decoder_input_ids=ids).logits, before)
    state = apply_methods(model, [LoraConfig(r=4), AlignmentConfig()])
    assert state.trainable_params(model) > 0
