"""Prompt tuning and P-tuning behaviour beyond the contract table: the equation against the base
model fed ``[P; E(x)]`` by hand, generation (T5 encoder once + cross-attention mask; LLaMA with a
KV cache), padding, ``inputs_embeds`` calls, bf16 autocast, folding P-tuning, and clear refusals."""

from __future__ import annotations

import copy

import pytest
import torch

from peftlab.errors import ModelError
from peftlab.methods import apply_methods, peft_state
from peftlab.methods.hooks import virtual_tokens
from peftlab.methods.alignment import AlignmentConfig
from peftlab.methods.io import WEIGHTS, load_adapter, save_adapter
from peftlab.methods.lora import LoraConfig
from peftlab.methods.p_tuning import PromptEncoder, PTuningConfig, fold
from peftlab.methods.prompt_tuning import PromptTuningConfig, SoftPrompt

from conftest import build_llama, build_t5, logits

N = 4
BUILD = {"t5": build_t5, "llama": build_llama}
METHODS = {
    "prompt": lambda: PromptTuningConfig(num_virtual_tokens=N),
    "p-mlp": lambda: PTuningConfig(num_virtual_tokens=N, hidden=8),
    "p-lstm": lambda: PTuningConfig(num_virtual_tokens=N, encoder="lstm", hidden=8),
}
BASE = {"name": "tiny", "init": "random", "config": {"seed": 0}}


def prompted(family, method="prompt", std=1.0):
    """A tiny model with ``method`` applied and a prompt large enough to steer it visibly."""
    model = BUILD[family]()
    apply_methods(model, [METHODS[method]()])
    vt = virtual_tokens.find(model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(7)
        target = vt.prompt if isinstance(vt, SoftPrompt) else vt.embedding
        target.copy_(torch.randn(target.shape, generator=g) * std)
    return model, vt


def by_hand(family, vt, batch):
    """The base model fed [P; E(x)] with the masks and labels the docstring of virtual_tokens says."""
    base = BUILD[family]()
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    with torch.no_grad():
        p = vt.prompts().unsqueeze(0).expand(ids.shape[0], -1, -1)
        embeds = torch.cat((p, base.get_input_embeddings()(ids)), dim=1)
        mask = torch.cat((torch.ones(ids.shape[0], N, dtype=mask.dtype), mask), dim=1)
        if family == "llama":
            labels = torch.cat((torch.full((ids.shape[0], N), -100), labels), dim=1)
        out = base(inputs_embeds=embeds, attention_mask=mask, labels=labels)
    return (out.logits if family == "t5" else out.logits[:, N:]), out.loss


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("family", ["t5", "llama"])
def test_equation_and_real_token_positions(family, method, request):
    """Outputs equal the base model fed [P; E(x)] by hand; logits keep the real tokens' shape and
    positions (T5: the decoder's; LLaMA: the T real tokens, virtual positions dropped)."""
    batch = request.getfixturevalue(f"{family}_batch")
    model, vt = prompted(family, method)
    with torch.no_grad():
        out = model(**batch)
    expected, loss = by_hand(family, vt, batch)
    assert out.logits.shape == logits(BUILD[family](), batch).shape
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, loss, atol=1e-5, rtol=0)
    assert (out.logits - logits(BUILD[family](), batch)).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_inputs_embeds_and_positional_calls(family, request):
    batch = request.getfixturevalue(f"{family}_batch")
    model, _ = prompted(family)
    expected = logits(model, batch)
    embeds = {**batch, "inputs_embeds": model.get_input_embeddings()(batch["input_ids"]).detach()}
    del embeds["input_ids"]
    torch.testing.assert_close(logits(model, embeds), expected, atol=1e-6, rtol=0)
    if family == "llama":  # forward(input_ids, attention_mask) by position
        with torch.no_grad():
            positional = model(batch["input_ids"], batch["attention_mask"]).logits
        torch.testing.assert_close(positional, expected, atol=1e-6, rtol=0)


def _greedy(model, ids, mask, steps, **kw):
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, do_sample=False, pad_token_id=0,
                             eos_token_id=None, output_scores=True, return_dict_in_generate=True, **kw)
    return out.sequences, torch.stack(out.scores, 1)


def _left_padded(lengths, seed=8):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids, mask = torch.zeros(len(lengths), T, dtype=torch.long), torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, T - n:] = torch.randint(2, 128, (n,), generator=g)
        mask[i, T - n:] = 1
    return ids, mask


@pytest.mark.parametrize("method", ["prompt", "p-lstm"])
def test_llama_generate_with_kv_cache_equals_no_cache(method):
    """Virtual tokens enter on the first step only; cached steps widen the mask and shift positions."""
    model, _ = prompted("llama", method)
    ids, mask = _left_padded([7, 4, 6])
    seq, scores = _greedy(model, ids, mask, 6)
    seq_nc, scores_nc = _greedy(model, ids, mask, 6, use_cache=False)
    assert torch.equal(seq, seq_nc)
    torch.testing.assert_close(scores, scores_nc, atol=1e-5, rtol=0)
    # and a plain forward over the whole generated text (positions from the mask, as generate
    # makes them) predicts every generated token
    full_mask = torch.cat((mask, torch.ones(3, 6, dtype=torch.long)), 1)
    positions = (full_mask.cumsum(1) - 1).clamp_min(0)
    with torch.no_grad():
        out = model(input_ids=seq, attention_mask=full_mask, position_ids=positions)
    step_logits = out.logits[:, ids.shape[1] - 1 : -1]
    torch.testing.assert_close(step_logits, scores, atol=1e-5, rtol=0)


def test_llama_generate_with_beams_and_from_inputs_embeds():
    model, _ = prompted("llama")
    ids, mask = _left_padded([6, 6])
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        beams = model.generate(input_ids=ids, attention_mask=mask, num_beams=3, **kw)
        beams_nc = model.generate(input_ids=ids, attention_mask=mask, num_beams=3, use_cache=False, **kw)
        from_ids = model.generate(input_ids=ids, attention_mask=mask, **kw)[:, ids.shape[1]:]
        from_embeds = model.generate(inputs_embeds=model.get_input_embeddings()(ids), attention_mask=mask, **kw)
    assert torch.equal(beams, beams_nc)
    assert torch.equal(from_embeds, from_ids)  # generate returns only new tokens for inputs_embeds


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")  # the loop's call
@pytest.mark.parametrize("family", ["t5", "llama"])
def test_gradient_checkpointing_gives_the_same_gradients(family, request):
    batch = request.getfixturevalue(f"{family}_batch")
    grads = []
    for checkpointing in (False, True):
        model, vt = prompted(family, "p-mlp")
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(**batch).loss.backward()
        grads.append([p.grad for p in vt.adapter_parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_llama_generation_does_not_depend_on_left_padding():
    # positions follow the real tokens (peft's ignore padding: a left-padded row moves)
    model, _ = prompted("llama")
    ids, mask = _left_padded([7, 4])
    _, batched = _greedy(model, ids, mask, 5)
    _, alone = _greedy(model, ids[1:, 3:], mask[1:, 3:], 5)
    torch.testing.assert_close(batched[1:], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["prompt", "p-mlp"])
def test_t5_generate_runs_the_encoder_once_and_masks_cross_attention(method, t5_batch):
    model, vt = prompted("t5", method, std=3.0)
    calls = []
    model.encoder.register_forward_pre_hook(lambda *a: calls.append(1))
    ids, mask = t5_batch["input_ids"], t5_batch["attention_mask"]
    seq, scores = _greedy(model, ids, mask, 4)
    assert len(calls) == 1, "the encoder ran more than once"
    # row 1 is padded (5 of 7 tokens): it must score as it does alone, so padding stays masked and
    # the virtual tokens are attended to by the decoder
    _, alone = _greedy(model, ids[1:, :5], mask[1:, :5], 4)
    torch.testing.assert_close(scores[1:], alone, atol=1e-5, rtol=0)
    with torch.no_grad():  # first step = a forward with the decoder start token
        first = model(input_ids=ids, attention_mask=mask, decoder_input_ids=seq[:, :1]).logits[:, -1]
    torch.testing.assert_close(scores[:, 0], first, atol=1e-5, rtol=0)
    beams = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, num_beams=3, do_sample=False)
    assert beams.shape[0] == 2


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_bf16_autocast_trains(family, request):
    batch = request.getfixturevalue(f"{family}_batch")
    for method in METHODS:
        model, vt = prompted(family, method)
        fp32 = logits(model, batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(**batch)
        out.loss.backward()
        assert torch.isfinite(out.loss)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vt.adapter_parameters())
        assert out.logits.shape == fp32.shape
        assert (out.logits.float() - fp32).abs().max() < 0.1  # bf16 keeps ~3 significant digits


@pytest.mark.parametrize("family", ["t5", "llama"])
@pytest.mark.parametrize("encoder", ["mlp", "lstm"])
def test_fold_keeps_outputs_and_shrinks_the_adapter(family, encoder, tmp_path, request):
    batch = request.getfixturevalue(f"{family}_batch")
    model = BUILD[family]()
    apply_methods(model, [PTuningConfig(num_virtual_tokens=N, encoder=encoder, hidden=8)])
    before = logits(model, batch)
    assert fold(model) == 1 and fold(model) == 0  # folding twice is a no-op
    vt = virtual_tokens.find(model)
    assert isinstance(vt, PromptEncoder) and vt.folded and vt.lstm is None
    torch.testing.assert_close(logits(model, batch), before, atol=1e-6, rtol=0)
    state = peft_state(model)
    d = vt.embedding.shape[1]
    assert state.configs[0].folded and state.counts(model) == {"p_tuning": N * d}
    assert state.trainable_names() == [n for n, p in model.named_parameters() if p.requires_grad]
    save_adapter(model, tmp_path, base_model=BASE)
    fresh = BUILD[family]()
    loaded = load_adapter(fresh, tmp_path, base_model=BASE)
    assert loaded.configs[0].folded
    torch.testing.assert_close(logits(fresh, batch), before, atol=1e-6, rtol=0)
    assert (tmp_path / WEIGHTS).stat().st_size < 4 * N * d + 1024


def test_lstm_dropout_is_off_in_eval_and_in_the_folded_tokens(t5_batch):
    model = build_t5()
    apply_methods(model, [PTuningConfig(num_virtual_tokens=N, encoder="lstm", hidden=8, dropout=0.5)])
    vt = virtual_tokens.find(model)
    with torch.no_grad():
        a, b = vt.prompts(), vt.prompts()
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    model.train()
    fold(model)
    torch.testing.assert_close(vt.prompts().detach(), a, atol=1e-6, rtol=0)


def test_two_virtual_token_methods_are_refused_naming_both():
    with pytest.raises(ModelError, match=r"p_tuning: .*prompt_tuning"):
        apply_methods(build_t5(), [PromptTuningConfig(num_virtual_tokens=2), PTuningConfig(num_virtual_tokens=2)])


def test_composes_with_lora_and_alignment(t5_batch):
    model = build_t5()
    state = apply_methods(model, [LoraConfig(r=2), AlignmentConfig(), PromptTuningConfig(num_virtual_tokens=N)])
    assert set(state.counts(model)) == {"lora", "alignment", "prompt_tuning"}
    model(**t5_batch).loss.backward()
    assert virtual_tokens.find(model).prompt.grad is not None


def test_a_4d_attention_mask_is_refused_clearly(llama_batch):
    model, _ = prompted("llama")
    mask4 = llama_batch["attention_mask"][:, None, None, :].bool().expand(-1, 1, 8, -1)
    with pytest.raises(ModelError, match="2-D"):
        model(input_ids=llama_batch["input_ids"], attention_mask=mask4)


def test_deep_copy_runs_its_own_prompt(t5_batch):
    model, _ = prompted("t5")
    twin = copy.deepcopy(model)
    with torch.no_grad():
        virtual_tokens.find(twin).prompt.mul_(-1)
    assert (logits(twin, t5_batch) - logits(model, t5_batch)).abs().max() > 1e-3


def test_inits():
    t5 = build_t5()
    table = t5.shared.weight.detach().clone()
    apply_methods(t5, [PromptTuningConfig(num_virtual_tokens=64, init="vocab")])
    rows = virtual_tokens.find(t5).prompt.detach()
    assert all((table == r).all(1).any() for r in rows)  # every row is some token's embedding
    llama = build_llama()
    std = llama.model.embed_tokens.weight.detach().std()
    apply_methods(llama, [PromptTuningConfig(num_virtual_tokens=64)])
    assert float(virtual_tokens.find(llama).prompt.detach().std()) == pytest.approx(float(std), rel=0.2)
    fixed = build_llama()
    apply_methods(fixed, [PromptTuningConfig(num_virtual_tokens=64, init_std=0.5)])
    assert float(virtual_tokens.find(fixed).prompt.detach().std()) == pytest.approx(0.5, rel=0.2)


def test_text_init_without_a_tokenizer_says_what_to_set():
    cfg = PromptTuningConfig(num_virtual_tokens=3, init="text", init_text="hello")
    with pytest.raises(ModelError, match="set the method's tokenizer"):
        apply_methods(build_t5(), [cfg])


def test_zero_virtual_tokens_is_impossible_by_config():
    for make in (PromptTuningConfig, PTuningConfig):
        with pytest.raises(ValueError, match="num_virtual_tokens"):
            make(num_virtual_tokens=0)
