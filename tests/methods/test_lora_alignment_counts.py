"""Seed 000's Table 3 parameter counts, reproduced on FLAN-T5-base shapes built on the meta device."""

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from peftlab.methods import apply_methods
from peftlab.methods.alignment import AlignmentConfig
from peftlab.methods.lora import LoraConfig

FLAN_T5_BASE = dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12,
                    num_heads=12, feed_forward_proj="gated-gelu", decoder_start_token_id=0)


# FLAN-T5-base ships an untied LM head (d_model x vocab); transformers 5 builds T5 with the head
# tied to the embedding, so the seed's percentages are of the total plus that head.
UNTIED_HEAD = 768 * 32128


def counts(methods):
    with torch.device("meta"):
        model = T5ForConditionalGeneration(T5Config(**FLAN_T5_BASE))
    state = apply_methods(model, methods)
    return state.counts(model), state.total_params + UNTIED_HEAD


@pytest.mark.parametrize("r, expected, pct", [(32, 3_538_944, 1.41), (50, 5_529_600, 2.18)])
def test_lora_counts_match_the_seed(r, expected, pct):
    by_method, total = counts([LoraConfig(r=r, alpha=32)])
    assert by_method == {"lora": expected}
    assert round(100 * expected / total, 2) == pytest.approx(pct, abs=0.02)  # seed: 1.41% and 2.18%


def test_alignment_adds_about_half_a_million_like_the_seed():
    by_method, total = counts([LoraConfig(r=32, alpha=32), AlignmentConfig()])
    d = 768
    assert by_method["alignment"] == d * d + d + d + d  # hypernetwork H, c + RMSNorm + gate
    trainable = sum(by_method.values())
    # seed 000: 4.1M trainable, 1.61%; ours 4.13M (1.64% of FLAN-T5-base's 251.7M incl. adapters)
    assert 4.0e6 < trainable < 4.2e6 and 1.55 < 100 * trainable / total < 1.7
