"""The README's prompt tuning / P-tuning parameter counts, on FLAN-T5-base shapes (meta device),
worked out by hand from d = 768 and the configs (defaults: n = 20, encoder width k = d)."""

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from peftlab.methods import apply_methods
from peftlab.methods.p_tuning import PTuningConfig
from peftlab.methods.prompt_tuning import PromptTuningConfig

from test_lora_alignment_counts import FLAN_T5_BASE

D = 768


def counts(method):
    with torch.device("meta"):
        model = T5ForConditionalGeneration(T5Config(**FLAN_T5_BASE))
    return apply_methods(model, [method]).counts(model)


@pytest.mark.parametrize(
    "method, expected",
    [
        (PromptTuningConfig(), 20 * D),  # 15,360: P (n, d)
        (PromptTuningConfig(num_virtual_tokens=100), 100 * D),  # 76,800
        # h (n, d) + Linear(d, d) + Linear(d, d) + Linear(d, d)
        (PTuningConfig(), 20 * D + 3 * (D * D + D)),  # 1,787,136
        (PTuningConfig(hidden=128), 20 * D + (D * 128 + 128) + (128 * 128 + 128) + (128 * D + D)),  # 229,376
        # h + bi-LSTM (2 layers, 2 directions: 4k(in + k + 2) each) + Linear(2k, 2k) + Linear(2k, d)
        (PTuningConfig(encoder="lstm"),
         20 * D + 2 * (4 * D * (D + D + 2) + 4 * D * (2 * D + D + 2)) + (2 * D * 2 * D + 2 * D) + (2 * D * D + D)),
    ],
    ids=["prompt-n20", "prompt-n100", "p-mlp", "p-mlp-k128", "p-lstm"],
)
def test_counts_on_flan_t5_base(method, expected):
    assert counts(method) == {method.name: expected}


def test_readme_numbers():
    assert counts(PromptTuningConfig()) == {"prompt_tuning": 15_360}
    assert counts(PTuningConfig()) == {"p_tuning": 1_787_136}
    assert counts(PTuningConfig(hidden=128)) == {"p_tuning": 229_376}
    assert counts(PTuningConfig(encoder="lstm")) == {"p_tuning": 27_174_144}
