"""Trainable parameters of the catalogue (DoRA, PiSSA, VeRA, AdaLoRA, LoHa, LoKr, OFT, BitFit, LN tuning)
on FLAN-T5-base shapes (meta device), worked out by hand: docs/methods.md's table quotes these numbers.

FLAN-T5-base: d = 768, d_ff = 2048, 12 heads x 64 = 768 inner, 12 encoder + 12 decoder blocks: 36
attentions (q, v: 72 linears 768 -> 768), 24 gated FFNs (wi_0, wi_1: 768 -> 2048; wo: 2048 -> 768).
"""

import pytest

from peftlab.methods.adalora import AdaLoraConfig
from peftlab.methods.bitfit import BitFitConfig
from peftlab.methods.dora import DoraConfig
from peftlab.methods.ln_tuning import LNTuningConfig
from peftlab.methods.loha import LoHaConfig
from peftlab.methods.lokr import LoKrConfig
from peftlab.methods.lora import LoraConfig
from peftlab.methods.oft import OFTConfig
from peftlab.methods.vera import VeraConfig

from test_lora_alignment_counts import counts


@pytest.mark.parametrize(
    "cfg, expected, pct",
    [
        (DoraConfig(r=8), 72 * (8 * 1536 + 768), 0.38),  # LoRA's A, B + a magnitude per output: 940,032
        (LoraConfig(r=8, init="pissa"), 72 * 8 * 1536, 0.36),  # LoRA's count (A0, B0 are frozen): 884,736
        (VeraConfig(r=256), 72 * (256 + 768), 0.03),  # d: (r,), b: (out,); the shared pair is frozen: 73,728
        # r = 12 on all 216 linears, Q (r x in), λ (r), P (out x r): 144 attention (768 -> 768),
        # 48 FFN in (768 -> 2048) and 24 out (2048 -> 768): 5,089,824 (the pruned λ stay, as zeros)
        (AdaLoraConfig(), 144 * 12 * (768 + 768 + 1) + 72 * 12 * (768 + 2048 + 1), 2.01),
        (LoHaConfig(r=4), 72 * 2 * 4 * 1536, 0.36),  # B1, A1, B2, A2: 884,736
        # 768 = 24 x 32 both ways: W1 24 x 24 full, W2 (32 x 8)(8 x 32) as r < 32 / 2: 78,336
        (LoKrConfig(r=8), 72 * (24 * 24 + 2 * 32 * 8), 0.03),
        (OFTConfig(block_size=32), 72 * (768 // 32) * (32 * 31 // 2), 0.34),  # 24 blocks of 496: 857,088
        # an added bias per output of every linear: 36 x (q, k, v, o) + 24 x (wi_0, wi_1, wo): 227,328
        (BitFitConfig(), 36 * 4 * 768 + 24 * (2 * 2048 + 768), 0.09),
        (LNTuningConfig(), (12 * 2 + 12 * 3 + 2) * 768, 0.02),  # every RMSNorm's gain: 47,616
    ],
    ids=["dora", "pissa", "vera", "adalora", "loha", "lokr", "oft", "bitfit", "ln-tuning"],
)
def test_counts_on_flan_t5_base(cfg, expected, pct):
    got, total = counts([cfg])
    assert got == {cfg.name: expected}
    # % of FLAN-T5-base (with its untied LM head) plus what the method adds, as the methods table quotes it
    assert round(100 * expected / total, 2) == pytest.approx(pct, abs=0.005)
