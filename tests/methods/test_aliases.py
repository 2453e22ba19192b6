"""peft's field names are accepted where they mean what peftlab's do: in Python (``LoraConfig(lora_alpha=32)``)
and in a YAML run config (``lora_alpha: 32``), converted where peft spells a value otherwise; a field given
under both names is an error naming both; the config keeps (and saves) peftlab's names."""

from __future__ import annotations

import pytest

from peftlab.config import from_dict, load_config, to_dict
from peftlab.errors import ConfigError
from peftlab.methods.base import MethodConfig
from peftlab.methods.ia3 import IA3Config
from peftlab.methods.lora import LoraConfig
from peftlab.methods.p_tuning import PTuningConfig
from peftlab.methods.prefix import PrefixConfig
from peftlab.methods.prompt_tuning import PromptTuningConfig


def test_lora_takes_peft_names_in_python():
    config = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1, target_modules=["query", "value"], use_rslora=True,
                        init_lora_weights="gaussian")
    assert config == LoraConfig(r=8, alpha=32, dropout=0.1, targets=("query", "value"), rslora=True, init="gaussian")
    assert LoraConfig(init_lora_weights=True).init == "kaiming"
    assert LoraConfig(target_modules=r".*\.attn\.c_attn").targets == (r"re:.*\.attn\.c_attn",)  # peft: a full-match regex
    assert LoraConfig(target_modules="all-linear").targets == ("all-linear",)
    assert to_dict(config) == {"name": "lora", "r": 8, "alpha": 32, "dropout": 0.1, "targets": ["query", "value"],
                               "stacks": None, "init": "gaussian", "rslora": True}


def test_peft_values_without_a_peftlab_form_and_both_names_are_refused():
    with pytest.raises(TypeError, match="LoraConfig: lora_alpha: another name for 'alpha', which is given too"):
        LoraConfig(alpha=16, lora_alpha=32)
    with pytest.raises(TypeError, match="init_lora_weights: false .* has no peftlab form"):
        LoraConfig(init_lora_weights=False)
    with pytest.raises(TypeError, match=r"target_modules: null \(peft's default for the architecture\)"):
        LoraConfig(target_modules=None)


def test_other_methods_take_peft_names():
    ia3 = IA3Config(target_modules=["k", "v", "wo"], feedforward_modules=["wo"])
    assert (ia3.targets, ia3.feedforward) == (("k", "v", "wo"), ("wo",))
    assert PrefixConfig(num_virtual_tokens=7).length == 7
    prompt = PromptTuningConfig(prompt_tuning_init="SAMPLE_VOCAB", num_virtual_tokens=5)
    assert (prompt.init, prompt.num_virtual_tokens) == ("vocab", 5)
    p = PTuningConfig(encoder_reparameterization_type="LSTM", encoder_hidden_size=16, encoder_num_layers=2)
    assert (p.encoder, p.hidden, p.lstm_layers) == ("lstm", 16, 2)


def test_a_yaml_config_takes_peft_names_and_blames_their_lines(tmp_path):
    from peftlab.schema import RunConfig

    path = tmp_path / "run.yaml"
    path.write_text("model: {name: mini-t5}\nmethods:\n  - name: lora\n    lora_alpha: 64\n"
                    "    target_modules: [q, k]\n")
    cfg = load_config(RunConfig, path)
    assert (cfg.methods[0].alpha, cfg.methods[0].targets) == (64.0, ("q", "k"))
    path.write_text("model: {name: mini-t5}\nmethods:\n  - name: lora\n    alpha: 8\n    lora_alpha: 64\n")
    with pytest.raises(ConfigError, match=r"run.yaml:5: methods.0.lora_alpha: another name for 'alpha'"):
        load_config(RunConfig, path)
    path.write_text("model: {name: mini-t5}\nmethods:\n  - name: lora\n    lora_dropout: lots\n")
    with pytest.raises(ConfigError, match=r"run.yaml:4: methods.0.lora_dropout: expected a number"):
        load_config(RunConfig, path)


def test_from_dict_and_overrides_keep_peftlabs_names():
    config = from_dict(MethodConfig, {"name": "lora", "lora_alpha": 8, "target_modules": ["q"]})
    assert to_dict(config)["alpha"] == 8.0 and "lora_alpha" not in to_dict(config)
