"""LLaMA family table: LLaMA 1/2/3, Mistral-style decoders (HF ``LlamaForCausalLM`` layout).

Blocks are ``model.layers.N``; attention linears ``q_proj,k_proj,v_proj,o_proj`` in ``self_attn``;
the SwiGLU FFN is ``gate_proj``, ``up_proj``, ``down_proj`` in ``mlp``.

The same layout (module names, pre-norms ``input_layernorm`` / ``post_attention_layernorm``, final
``model.norm``) is Mistral, Qwen2 (biases on q/k/v), Qwen3 (plus per-head RMSNorms ``q_norm`` /
``k_norm`` inside ``self_attn``, which no method here touches) and Gemma (embeddings scaled by √d,
norms ``1 + w``); ``tests/models/test_decoder_families.py`` checks each. Gemma 2/3 are *not* covered: their
extra ``pre_feedforward_layernorm`` / ``post_feedforward_layernorm`` move the FFN's residual branch.
"""

from peftlab.models.arch import Family

LLAMA = Family(
    name="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3", "gemma"),
    kind="causal",
    linear_roles={
        "q": ("q_proj",),
        "k": ("k_proj",),
        "v": ("v_proj",),
        "o": ("o_proj",),
        "ffn_in": ("up_proj",),
        "ffn_gate": ("gate_proj",),
        "ffn_out": ("down_proj",),
    },
    stacks={"decoder": "model.layers"},
    encoder=None,
    hidden_size="hidden_size",
    num_heads="num_attention_heads",
    default_lora_targets=("q", "v"),
    attention={"self": "self_attn"},
    ffn="mlp",
    norms=("input_layernorm", "post_attention_layernorm"),
    # h + self_attn(input_layernorm(h)), then h + mlp(post_attention_layernorm(h))
    pre_norms={"self": "input_layernorm", "ffn": "post_attention_layernorm"},
    branch_outputs={"self": "", "ffn": ""},
    final_norms=("model.norm",),
    embeddings="model.embed_tokens",
    lm_head="lm_head",
    num_kv_heads="num_key_value_heads",
    head_dim="head_dim",
    rotary="model.rotary_emb",
    tiny_config=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
    ),
)
