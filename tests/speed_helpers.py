"""Tiny models for speed-spec tests, as YAML flow mappings for a spec's ``model:``: built from config
with random weights in milliseconds."""

from __future__ import annotations

# one process, one thread, no memory workers: what a test of a spec's plumbing needs
QUICK = "device: cpu\nthreads: 1\nprecisions: [fp32]\nwarmup: 1\nreps: 2\nmemory: false\n"
TINY_T5 = ("{family: t5, config: {vocab_size: 128, d_model: 32, d_kv: 8, d_ff: 64, num_layers: 2, num_decoder_layers: 2,"
           " num_heads: 4, feed_forward_proj: gated-gelu, decoder_start_token_id: 0, pad_token_id: 0, eos_token_id: 1,"
           " dropout_rate: 0.0}}")
TINY_GPT2 = ("{family: gpt2, config: {n_layer: 2, n_embd: 32, n_head: 4, vocab_size: 128, n_positions: 64,"
             " resid_pdrop: 0.0, embd_pdrop: 0.0, attn_pdrop: 0.0, bos_token_id: 0, eos_token_id: 0}}")


def tiny_llama(kv_heads: int = 2) -> str:
    return ("{family: llama, config: {vocab_size: 128, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,"
            f" num_attention_heads: 4, num_key_value_heads: {kv_heads}, max_position_embeddings: 64}}}}")
