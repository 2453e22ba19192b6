"""The Python API on any ``transformers`` model: BERT- and Phi-3-shaped models (no family table: their
linear layers by name), Qwen2 (the llama table) and GPT-2 (its own table), each tiny, built from its
config. LoRA and IA3 with peft's field names: identity at init, training moves only the method's
parameters, save -> load on a fresh base, merge into a plain model, export that HF peft loads; bottleneck
adapters where the config names the sub-layers; refusals by name for what needs a table."""

from __future__ import annotations

import pytest
import torch

from peftlab.errors import ModelError
from peftlab.methods import apply_methods
from peftlab.methods.export import export_peft, merged_model
from peftlab.methods.houlsby import HoulsbyConfig
from peftlab.methods.ia3 import IA3Config
from peftlab.methods.io import load_adapter, read_manifest, save_adapter
from peftlab.methods.lora import LoraConfig
from peftlab.methods.parallel import ParallelAdapterConfig
from peftlab.methods.pfeiffer import PfeifferConfig
from peftlab.methods.prefix import PrefixConfig
from peftlab.methods.prompt_tuning import PromptTuningConfig
from peftlab.models.arch import family_for

VOCAB = 128


def build(shape: str, seed: int = 0):
    """A tiny random model of ``shape``, the same weights for the same seed."""
    import transformers as tf

    torch.manual_seed(seed)
    if shape == "bert":
        config = tf.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        return tf.BertForSequenceClassification(config).eval()
    if shape == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=1)
    if shape == "phi3":
        return tf.Phi3ForCausalLM(tf.Phi3Config(**common)).eval()
    return tf.Qwen2ForCausalLM(tf.Qwen2Config(**common)).eval()


def batch(shape: str) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, VOCAB, (2, 8), generator=g)
    labels = torch.tensor([0, 1]) if shape == "bert" else ids
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def outputs(model, shape: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: v for k, v in batch(shape).items() if k != "labels"}).logits


# shape -> LoRA and IA3 in peft's words, and how many parameters each trains (2 blocks each)
PEFT_LORA = {
    "bert": dict(target_modules=["query", "value"], n=2 * 2 * 4 * (32 + 32)),  # r (in + out) per layer
    "phi3": dict(target_modules=["qkv_proj", "o_proj"], n=2 * (4 * (32 + 64) + 4 * (32 + 32))),  # qkv: 32 -> 64
    "qwen2": dict(target_modules=["q_proj", "v_proj"], n=2 * (4 * (32 + 32) + 4 * (32 + 16))),  # v: 2 kv heads of 8
    "gpt2": dict(target_modules=["c_attn"], n=2 * 4 * (32 + 96)),
}
PEFT_IA3 = {
    "bert": dict(target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"]),
    "phi3": dict(target_modules=["qkv_proj", "down_proj"], feedforward_modules=["down_proj"]),
    "qwen2": dict(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
    "gpt2": dict(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"]),
}
SHAPES = tuple(PEFT_LORA)


def test_each_shape_gets_its_table_or_the_family_of_its_linear_layers():
    families = {shape: family_for(build(shape)) for shape in SHAPES}
    assert [(f.name, f.table) for f in families.values()] == [("bert", False), ("phi3", False), ("llama", True),
                                                             ("gpt2", True)]
    assert families["bert"].stacks == {"bert.encoder.layer": "bert.encoder.layer"} and families["bert"].kind == "encoder"
    assert families["phi3"].stacks == {"model.layers": "model.layers"} and families["phi3"].kind == "causal"


def _nudge(model) -> None:
    """A few optimizer steps, so that a round trip carries something that is not the init."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    for _ in range(2):
        model(**batch_of(model)).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def batch_of(model) -> dict:
    return batch("bert" if model.config.model_type == "bert" else "causal")


@pytest.mark.parametrize("shape", SHAPES)
def test_lora_in_peft_words_trains_saves_merges_and_exports(shape, tmp_path):
    spec = dict(PEFT_LORA[shape])
    n = spec.pop("n")
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, **spec)
    model = build(shape)
    before = outputs(model, shape)
    state = apply_methods(model, [config])
    assert state.trainable_params(model) == n
    assert torch.allclose(outputs(model, shape), before)  # B = 0: the base model at init
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    _nudge(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())  # only LoRA moved
    trained = outputs(model, shape)
    assert not torch.allclose(trained, before)

    save_adapter(model, tmp_path / "a", base_model={"name": shape})
    assert read_manifest(tmp_path / "a")["methods"][0]["alpha"] == 8.0  # saved under peftlab's names
    again = build(shape)
    load_adapter(again, tmp_path / "a", base_model={"name": shape})
    assert torch.allclose(outputs(again.eval(), shape), trained, atol=1e-6)

    export_peft(model, tmp_path / "peft", shape)
    peft = pytest.importorskip("peft")
    theirs = peft.PeftModel.from_pretrained(build(shape), tmp_path / "peft").eval()
    assert torch.allclose(outputs(theirs, shape), trained, atol=1e-5)

    plain = merged_model(again)
    assert not any("lora" in k for k in plain.state_dict())
    plain.save_pretrained(tmp_path / "merged")
    reread = type(plain).from_pretrained(tmp_path / "merged").eval()
    assert torch.allclose(outputs(reread, shape), trained, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_ia3_in_peft_words_merges(shape):
    model = build(shape)
    before = outputs(model, shape)
    apply_methods(model, [IA3Config(**PEFT_IA3[shape])])
    assert torch.allclose(outputs(model, shape), before)  # every l starts at 1
    _nudge(model)
    trained = outputs(model, shape)
    assert torch.allclose(outputs(merged_model(model), shape), trained, atol=1e-5)


def test_bottleneck_adapters_where_the_config_names_the_sublayers(tmp_path):
    # BERT is post-norm: a Houlsby adapter on each branch before the residual add and LayerNorm
    bert = build("bert")
    before = outputs(bert, "bert")
    houlsby = HoulsbyConfig(reduction_factor=8, branches={"self": "attention.output.dropout", "ffn": "output.dropout"})
    state = apply_methods(bert, [houlsby])
    assert state.trainable_params(bert) == 2 * 2 * (2 * 32 * 4 + 4 + 32)  # blocks x branches x (down, up)
    assert torch.allclose(outputs(bert, "bert"), before)  # zero_up: the base at init
    _nudge(bert)
    save_adapter(bert, tmp_path / "h", base_model={"name": "bert"})
    again = build("bert")
    load_adapter(again, tmp_path / "h", base_model={"name": "bert"})
    assert torch.allclose(outputs(again.eval(), "bert"), outputs(bert, "bert"), atol=1e-6)

    # Phi-3 is pre-norm: a parallel adapter reads h, the input of the norm before each sub-layer
    phi = build("phi3")
    parallel = ParallelAdapterConfig(sublayers=("self", "ffn"), branches={"self": "self_attn", "ffn": "mlp"},
                                     pre_norms={"self": "input_layernorm", "ffn": "post_attention_layernorm"})
    apply_methods(phi, [LoraConfig(target_modules="model\\.layers\\.\\d+\\.self_attn\\.o_proj"), parallel])
    _nudge(phi)


def test_what_a_model_without_a_table_cannot_take_is_refused_by_name():
    with pytest.raises(ModelError, match=r"'prefix' needs the attention modules.*this phi3 model has none.*lora"):
        apply_methods(build("phi3"), [PrefixConfig()])
    with pytest.raises(ModelError, match=r"'prompt_tuning' needs where the input embeddings"):
        apply_methods(build("bert"), [PromptTuningConfig()])
    with pytest.raises(ModelError, match=r"linear layers are named: dense, key, query, value \(it has no peftlab "
                                         r"family table, so name them"):
        apply_methods(build("bert"), [LoraConfig()])  # roles (q, v) mean nothing without a table
    with pytest.raises(ModelError, match="pfeiffer: it reads the residual stream h: name the norm"):
        apply_methods(build("bert"), [PfeifferConfig(branches={"ffn": "output.dropout"}, sublayers=("ffn",))])
    with pytest.raises(ModelError, match=r"houlsby: this bert model has no peftlab family table, so name where"):
        apply_methods(build("bert"), [HoulsbyConfig()])
    with pytest.raises(ModelError, match=r"houlsby: branches.self: block 0 of this bert model has no module 'nope'"):
        apply_methods(build("bert"), [HoulsbyConfig(branches={"self": "nope", "ffn": "output.dropout"})])
    with pytest.raises(ModelError, match="branches and pre_norms are for models without a family table"):
        apply_methods(build("qwen2"), [HoulsbyConfig(branches={"self": "self_attn", "ffn": "mlp"})])


def test_every_method_applies_to_a_model_without_a_table_or_is_refused_by_name():
    """A method that needs more than named layers must say so (``MethodConfig.needs_table``), not
    fail inside its ``apply`` on a family that has no attention modules, norms or embeddings."""
    from peftlab.methods.registry import get_method, method_names

    for name in method_names():
        try:
            apply_methods(build("phi3"), [get_method(name)()])
        except ModelError as e:
            assert "no peftlab family table" in str(e) or "needs" in str(e) or "does not support" in str(e), (name, e)


def test_peftlabs_loop_trains_a_model_without_a_table():
    from peftlab.data.seq2seq import BatchPlan, Encoded
    from peftlab.schema import TrainSpec
    from peftlab.train.loop import LoopOptions, train

    model = build("phi3")
    apply_methods(model, [LoraConfig(target_modules="all-linear")])
    rows = [list(range(2, 12)), list(range(20, 28))]
    plan = BatchPlan(Encoded(input_ids=rows, labels=rows), batch_size=2, pad_id=0)
    result = train(model, plan, TrainSpec(max_steps=2, lr=1e-2, device="cpu", mixed_precision="no"),
                   options=LoopOptions(progress=False))
    assert result.steps == 2 and result.final_loss is not None
