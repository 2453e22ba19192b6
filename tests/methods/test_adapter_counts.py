"""Trainable parameters of the bottleneck adapters, AdapterDrop, IA3, HyperFormer++, UniPELT and prefix tuning on FLAN-T5-base shapes
(meta device), worked out by hand: the README's method table quotes these numbers.

FLAN-T5-base: d = 768, d_ff = 2048, 12 heads x 64 = 768 inner, 12 encoder + 12 decoder blocks.
A bottleneck adapter is 2·d·m + m + d = 2·768·m + m + 768.
"""

import pytest

from peftlab.methods.houlsby import HoulsbyConfig
from peftlab.methods.hyperformer import HyperFormerConfig
from peftlab.methods.unipelt import UniPELTConfig
from peftlab.methods.ia3 import IA3Config
from peftlab.methods.parallel import ParallelAdapterConfig
from peftlab.methods.pfeiffer import PfeifferConfig
from peftlab.methods.prefix import PrefixConfig

from test_lora_alignment_counts import counts

M48 = 2 * 768 * 48 + 48 + 768  # 74,544: reduction factor 16
M384 = 2 * 768 * 384 + 384 + 768  # 590,976: reduction factor 2


@pytest.mark.parametrize(
    "cfg, expected, pct",
    [
        (HoulsbyConfig(), 48 * M48, 1.42),  # 24 blocks x (attention + FFN) = 3,578,112
        (HoulsbyConfig(drop_lowest=6), 24 * M48, 0.72),  # AdapterDrop: 6 + 6 blocks without = 1,789,056
        (PfeifferConfig(), 24 * M48, 0.72),  # 24 blocks x FFN = 1,789,056
        (ParallelAdapterConfig(), 24 * M384, 5.42),  # 24 blocks x FFN = 14,183,424
        # keys and values of 12 + 12 self- and 12 cross-attentions, FFN activations of 24 blocks
        (IA3Config(), 36 * 2 * 768 + 24 * 2048, 0.04),  # 104,448
        # HyperFormer++, 2 tasks, t = p = 64, h = 128, m = 768/32 = 24, generated LN after: per stack
        # (12 layer + 2 position embeddings)·64 + task projector 24,704 + 8,256 + LN 128 + generator
        # 65 x G, G = 2·768·24 + 24 + 768 + 2·768 = 39,192; + 2 task embeddings + 62 base norms of 768
        (HyperFormerConfig(tasks=2), 2 * (14 * 64 + 24_704 + 8_256 + 128 + 65 * 39_192) + 2 * 64 + 62 * 768, 2.06),
        # UniPELT: gated LoRA r=8 on q, v of 36 attentions (72 x (8·1536 + 769)) + gated prefix rows,
        # P=10, in the 36 attentions (36 x (2·10·768 + 769)) + gated Pfeiffer adapters m=48 after 24 FFNs
        # (24 x (M48 + 769)): 3,328,260 as saved; while training the prefix MLP (h=512) replaces the
        # rows: 10·768 + (768·512 + 512) + (512·55,296 + 55,296) = 28,768,256 -> 31,543,556
        (UniPELTConfig(prefix_projection=0), 72 * (8 * 1536 + 769) + 36 * (2 * 10 * 768 + 769) + 24 * (M48 + 769), 1.33),
        (UniPELTConfig(), 72 * (8 * 1536 + 769) + 28_768_256 + 36 * 769 + 24 * (M48 + 769), 11.30),
        # prefix P=20: a key and a value row per position in 12 + 12 self- and 12 cross-attentions, as
        # saved; while training the MLP (h=512) makes them from 20 embeddings: 20·768 + (768·512 + 512)
        # + (512·55,296 + 55,296) with 55,296 = 36·2·768
        (PrefixConfig(length=20, projection=0), 36 * 2 * 20 * 768, 0.44),
        (PrefixConfig(length=20, projection=512), 20 * 768 + (768 * 512 + 512) + (512 * 55_296 + 55_296), 10.41),
    ],
    ids=["houlsby", "houlsby-adapterdrop6", "pfeiffer", "parallel", "ia3", "hyperformer", "unipelt-saved",
         "unipelt-training", "prefix-saved", "prefix-training"],
)
def test_counts_on_flan_t5_base(cfg, expected, pct):
    got, total = counts([cfg])
    assert got == {cfg.name: expected}
    # % of FLAN-T5-base (with its untied LM head) plus the method, as the README quotes it
    assert round(100 * expected / total, 2) == pytest.approx(pct, abs=0.005)
