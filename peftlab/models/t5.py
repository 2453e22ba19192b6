"""T5 family table: T5, T5 v1.1, FLAN-T5, CodeT5, mT5 (HF ``T5ForConditionalGeneration`` layout).

Blocks are ``encoder.block.N`` / ``decoder.block.N``; attention linears are ``q,k,v,o`` inside
``SelfAttention`` and ``EncDecAttention``; the FFN is ``wi`` (or gated ``wi_0``/``wi_1``) and ``wo``.
"""

from peftlab.models.arch import Family

T5 = Family(
    name="t5",
    model_types=("t5", "mt5", "umt5"),
    kind="seq2seq",
    linear_roles={
        "q": ("q",),
        "k": ("k",),
        "v": ("v",),
        "o": ("o",),
        "ffn_in": ("wi", "wi_1"),
        "ffn_gate": ("wi_0",),
        "ffn_out": ("wo",),
    },
    stacks={"encoder": "encoder.block", "decoder": "decoder.block"},
    encoder="encoder",
    hidden_size="d_model",
    num_heads="num_heads",
    default_lora_targets=("q", "v"),
    # block.layer[0] = T5LayerSelfAttention(SelfAttention, layer_norm); decoder layer[1] =
    # T5LayerCrossAttention(EncDecAttention, layer_norm); layer[-1] = T5LayerFF(DenseReluDense, layer_norm)
    attention={"self": "SelfAttention", "cross": "EncDecAttention"},
    ffn="DenseReluDense",
    norms=("layer_norm",),
    # layer[i](h) = h + dropout(sublayer(layer_norm(h))): the branch ends at the layer's dropout
    pre_norms={"self": "layer_norm", "cross": "layer_norm", "ffn": "layer_norm"},
    branch_outputs={"self": "dropout", "cross": "dropout", "ffn": "dropout"},
    final_norms=("encoder.final_layer_norm", "decoder.final_layer_norm"),
    embeddings="shared",
    lm_head="lm_head",
    head_dim="d_kv",
    decoder="decoder",
    tiny_config=dict(
        d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", dropout_rate=0.0, relative_attention_num_buckets=8,
    ),
)
