"""GPT-2 family table (HF ``GPT2LMHeadModel`` layout; Radford et al., 2019).

Blocks are ``transformer.h.N``: ``h + attn(ln_1(h))`` then ``h + mlp(ln_2(h))`` (pre-norm, the
attention output already through its residual dropout). Every linear map is a ``Conv1D``, whose
weight is stored transposed (in × out; peft's ``fan_in_fan_out``): ``attn.c_attn`` computes q, k
and v at once (d -> 3d), ``attn.c_proj`` is the output projection, ``mlp.c_fc`` / ``mlp.c_proj``
the FFN (d -> 4d -> d). ``c_proj`` exists twice per block, so its roles use the dotted leaf.
q, k and v are fused: a method targets ``c_attn`` whole (the roles are refused with that advice);
positions are a learned table (``wpe``, ``n_positions``), the LM head is tied to ``wte``.
"""

from peftlab.models.arch import Family

GPT2 = Family(
    name="gpt2",
    model_types=("gpt2",),
    kind="causal",
    linear_roles={
        "qkv": ("attn.c_attn",),
        "o": ("attn.c_proj",),
        "ffn_in": ("mlp.c_fc",),
        "ffn_out": ("mlp.c_proj",),
    },
    stacks={"decoder": "transformer.h"},
    encoder=None,
    hidden_size="n_embd",
    num_heads="n_head",
    default_lora_targets=("c_attn",),
    attention={"self": "attn"},
    ffn="mlp",
    norms=("ln_1", "ln_2"),
    # h + attn(ln_1(h)), then h + mlp(ln_2(h)): the branch is the sub-layer's own output
    pre_norms={"self": "ln_1", "ffn": "ln_2"},
    branch_outputs={"self": "", "ffn": ""},
    final_norms=("transformer.ln_f",),
    embeddings="transformer.wte",
    fused_roles={"q": "c_attn", "k": "c_attn", "v": "c_attn"},
    tiny_config=dict(n_embd=32, n_layer=2, n_head=4, n_positions=256, tie_word_embeddings=True),
)
