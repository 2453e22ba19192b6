"""Every field is checked when the config loads, before any model or data is touched: one table
row per numeric field of every spec, and a completeness check that
fails when a numeric field is added without a row (add one: a bad value and the words expected)."""

import dataclasses
import types
import typing
from pathlib import Path

import pytest

from peftlab.config import load_config
from peftlab.errors import ConfigError
from peftlab.schema import DataSpec, EvalSpec, ModelSpec, RunConfig, TrainSpec

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "configs" / "pretrain" / "mini-t5-v1.yaml"

# (spec, field, a value the config must refuse, words the message must hold); several rows per
# field where both ends of a range matter
BAD = [
    (DataSpec, "max_source_length", 4, "must be >= 8"),
    (DataSpec, "max_target_length", 1, "must be >= 2"),
    (DataSpec, "max_train_examples", 0, "must be >= 1"),
    (DataSpec, "max_eval_examples", -3, "must be >= 1"),
    (TrainSpec, "max_steps", -1, "must be >= 0"),
    (TrainSpec, "max_seconds", 0, "must be > 0"),
    (TrainSpec, "max_seconds", -5.0, "must be > 0"),
    (TrainSpec, "batch_size", 0, "must be >= 1"),
    (TrainSpec, "grad_accum", 0, "must be >= 1"),
    (TrainSpec, "lr", 0, "must be > 0"),
    (TrainSpec, "lr", -1e-3, "must be > 0"),
    (TrainSpec, "lr", ".nan", "expected a finite number"),
    (TrainSpec, "weight_decay", -0.1, "must be >= 0"),
    (TrainSpec, "warmup_steps", -1, "must be >= 0"),
    (TrainSpec, "max_grad_norm", 0, "must be > 0"),
    (TrainSpec, "loraplus_ratio", 0, "must be > 0"),
    (TrainSpec, "max_grad_norm", ".inf", "expected a finite number"),
    (TrainSpec, "skip_nonfinite", -1, "must be >= 0"),
    (TrainSpec, "seed", -1, "must be >= 0"),
    (TrainSpec, "log_every", 0, "must be >= 1"),
    (TrainSpec, "eval_every", 0, "must be >= 1"),
    (TrainSpec, "checkpoint_every", 0, "must be >= 1"),
    (TrainSpec, "keep_checkpoints", 0, "must be >= 1"),
    (TrainSpec, "num_threads", 0, "must be >= 1"),
    (TrainSpec, "loss_chunk", 0, "must be >= 1"),
    (EvalSpec, "num_beams", 0, "must be >= 1"),
    (EvalSpec, "max_new_tokens", 0, "must be >= 1"),
    (EvalSpec, "no_repeat_ngram_size", -1, "must be >= 0"),
    (EvalSpec, "repetition_penalty", 0, "must be > 0"),
    (EvalSpec, "batch_size", 0, "must be >= 1"),
    (EvalSpec, "max_examples", 0, "must be >= 1"),
    (EvalSpec, "max_examples", -2, "must be >= 1"),
    (EvalSpec, "length_penalty", 0, "must be > 0"),
    (EvalSpec, "select_examples", 0, "must be >= 1"),
    (EvalSpec, "perplexity_window", 1, "perplexity_window must be >= 2"),
    (EvalSpec, "perplexity_stride", 0, "perplexity_stride must be in"),
    (EvalSpec, "seed", -1, "must be >= 0"),
    (EvalSpec, "temperature", 0, "must be > 0"),
    (EvalSpec, "top_p", 0, "must be > 0"),
    (EvalSpec, "top_p", 1.5, "top_p must be in (0, 1]"),
]
SECTION = {DataSpec: "data", TrainSpec: "train", EvalSpec: "eval", ModelSpec: "model"}

METHOD_BAD = [  # (method, field, value, words)
    ("lora", "r", 0, "must be >= 1"),
    ("lora", "alpha", 0, "must be > 0"),
    ("lora", "dropout", 1.0, "dropout must be in [0, 1)"),
    ("lora", "dropout", ".nan", "expected a finite number"),
    ("alignment", "hidden", 0, "must be >= 1"),
    ("alignment", "eps", 0, "must be > 0"),
    ('houlsby', 'bottleneck', -1, 'bottleneck must be >= 1 or null'),
    ('houlsby', 'drop_lowest', -1, 'drop_lowest must be >= 0'),
    ('houlsby', 'dropout', -1, 'dropout must be in [0, 1)'),
    ('houlsby', 'reduction_factor', -1, 'reduction_factor must be > 0'),
    ('houlsby', 'scaling', -1, 'scaling must be > 0'),
    ('hyperformer', 'tasks', 0, 'tasks must be >= 1 or null'),
    ('hyperformer', 'task_dim', 0, 'task_dim must be >= 1'),
    ('hyperformer', 'hidden', 0, 'hidden must be >= 1'),
    ('hyperformer', 'projected', 0, 'projected must be >= 1'),
    ('hyperformer', 'reduction_factor', 0, 'reduction_factor must be > 0'),
    ('hyperformer', 'bottleneck', 0, 'bottleneck must be >= 1 or null'),
    ('hyperformer', 'drop_lowest', -1, 'drop_lowest must be >= 0'),
    ('unipelt', 'r', 0, 'r must be >= 1'),
    ('unipelt', 'lora_dropout', 1.0, 'lora_dropout must be in [0, 1)'),
    ('unipelt', 'prefix_length', 0, 'prefix_length must be >= 1'),
    ('unipelt', 'prefix_projection', -1, 'prefix_projection must be >= 0'),
    ('unipelt', 'reduction_factor', 0, 'reduction_factor must be > 0'),
    ('unipelt', 'bottleneck', 0, 'bottleneck must be >= 1 or null'),
    ('llama_adapter', 'layers', -1, 'layers must be >= 1 or null'),
    ('llama_adapter', 'length', -1, 'length must be >= 1'),
    ('llama_adapter_v2', 'layers', -1, 'layers must be >= 1 or null'),
    ('llama_adapter_v2', 'length', -1, 'length must be >= 1'),
    ('p_tuning', 'dropout', -1, 'dropout must be in [0, 1)'),
    ('p_tuning', 'hidden', -1, 'hidden must be >= 1 or null'),
    ('p_tuning', 'lstm_layers', -1, 'lstm_layers must be >= 1'),
    ('p_tuning', 'num_virtual_tokens', -1, 'num_virtual_tokens must be >= 1'),
    ('parallel', 'bottleneck', -1, 'bottleneck must be >= 1 or null'),
    ('parallel', 'drop_lowest', -1, 'drop_lowest must be >= 0'),
    ('parallel', 'dropout', -1, 'dropout must be in [0, 1)'),
    ('parallel', 'reduction_factor', -1, 'reduction_factor must be > 0'),
    ('parallel', 'scaling', -1, 'scaling must be > 0'),
    ('pfeiffer', 'bottleneck', -1, 'bottleneck must be >= 1 or null'),
    ('pfeiffer', 'drop_lowest', -1, 'drop_lowest must be >= 0'),
    ('pfeiffer', 'dropout', -1, 'dropout must be in [0, 1)'),
    ('pfeiffer', 'reduction_factor', -1, 'reduction_factor must be > 0'),
    ('pfeiffer', 'scaling', -1, 'scaling must be > 0'),
    ('prefix', 'length', -1, 'length must be >= 1'),
    ('prefix', 'projection', -1, 'projection must be >= 0'),
    ('prompt_tuning', 'init_std', -1, 'init_std must be a positive number'),
    ('prompt_tuning', 'num_virtual_tokens', -1, 'num_virtual_tokens must be >= 1'),
    ('s2_attn', 'group_fraction', -1, 'group_fraction must be in'),
    ('s2_attn', 'group_size', -1, 'group_size must be >= 0'),
    ('strided', 'stride', -1, 'stride must be >= 1'),
    ('strided', 'window', -1, 'window must be >= 1'),
    ('dora', 'r', 0, 'r must be >= 1'),
    ('dora', 'alpha', -1, 'must be > 0'),
    ('dora', 'dropout', 1.0, 'dropout must be in [0, 1)'),
    ('vera', 'r', 0, 'r must be >= 1'),
    ('vera', 'dropout', 1.0, 'dropout must be in [0, 1)'),
    ('vera', 'd_initial', 0, 'd_initial must be > 0'),
    ('vera', 'projection_seed', -1, 'projection_seed must be >= 0'),
    ('adalora', 'r', 0, 'must be >= 1'),
    ('adalora', 'target_r', 0, 'must be >= 1'),
    ('adalora', 'alpha', 0, 'alpha must be > 0'),
    ('adalora', 'dropout', 1.0, 'dropout must be in [0, 1)'),
    ('adalora', 'tinit', -1, 'must be >= 0'),
    ('adalora', 'tfinal', -1, 'must be >= 0'),
    ('adalora', 'delta_t', 0, 'must be >= 1'),
    ('adalora', 'beta1', 1.5, 'beta1 must be in (0, 1)'),
    ('adalora', 'beta2', 0, 'beta2 must be in (0, 1)'),
    ('adalora', 'orth_reg_weight', -1, 'must be >= 0'),
    ('adalora', 'total_step', 0, 'must be >= 1'),
    ('loha', 'r', 0, 'r must be >= 1'),
    ('loha', 'alpha', 0, 'must be > 0'),
    ('lokr', 'r', 0, 'r must be >= 1'),
    ('lokr', 'alpha', 0, 'must be > 0'),
    ('lokr', 'decompose_factor', -2, 'decompose_factor must be -1 or >= 1'),
    ('oft', 'block_size', 1, 'block_size must be >= 2'),
    ('oft', 'neumann_terms', -1, 'neumann_terms must be >= 0'),
]

PRETRAIN_BAD = [
    ("vocab_size", 100, "must be >= 360"),
    ("inputs_length", 4, "must be >= 8"),
    ("noise_density", 0, "between 0 and 1"),
    ("noise_density", 1.0, "between 0 and 1"),
    ("mean_span_length", 0.5, "must be >= 1"),
    ("heldout_percent", 0, "must be >= 1"),
    ("heldout_percent", 100, "must be < 100"),
    ("checkpoint_every", 0, "must be >= 1"),
    ("keep_checkpoints", 0, "must be >= 1"),
    ("eval_batches", 0, "must be >= 1"),
]


def numeric_fields(cls) -> set[str]:
    """Fields typed int or float (or Optional of them)."""
    out = set()
    for name, tp in typing.get_type_hints(cls).items():
        if name not in {f.name for f in dataclasses.fields(cls)}:
            continue
        args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
        if any(a in (int, float) for a in args):
            out.add(name)
    return out


@pytest.mark.parametrize("spec, field, value, words", BAD, ids=[f"{SECTION[r[0]]}.{r[1]}={r[2]}" for r in BAD])
def test_every_run_field_is_checked_at_load(spec, field, value, words):
    key = f"{SECTION[spec]}.{field}"
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, None, [f"{key}={value}"])
    msg = str(e.value)
    assert f"override '{key}={value}': {key}: " in msg and words in msg, msg


@pytest.mark.parametrize("method, field, value, words", METHOD_BAD, ids=[f"{r[0]}.{r[1]}={r[2]}" for r in METHOD_BAD])
def test_every_method_field_is_checked_at_load(method, field, value, words):
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, None, [f"methods=[{{name: {method}, {field}: {value}}}]"])
    assert words in str(e.value), str(e.value)


@pytest.mark.parametrize("field, value, words", PRETRAIN_BAD, ids=[f"{r[0]}={r[1]}" for r in PRETRAIN_BAD])
def test_every_pretrain_field_is_checked_at_load(field, value, words):
    from peftlab.pretrain.recipe import load_pretrain_config

    with pytest.raises(ConfigError) as e:
        load_pretrain_config(PRETRAIN, [f"{field}={value}"])
    assert f"{field}: " in str(e.value) and words in str(e.value), str(e.value)


def test_the_tables_cover_every_numeric_field():
    """A numeric field added to a spec without a row here is a field nobody checks."""
    from peftlab.methods import get_method
    from peftlab.pretrain.recipe import PretrainConfig

    for spec in (ModelSpec, DataSpec, TrainSpec, EvalSpec):
        missing = numeric_fields(spec) - {f for s, f, _, _ in BAD if s is spec}
        assert not missing, f"{spec.__name__}: add rows to BAD for {sorted(missing)}"
    from peftlab.methods import method_names

    for method in method_names():
        missing = numeric_fields(get_method(method)) - {f for m, f, _, _ in METHOD_BAD if m == method}
        assert not missing, f"{method}: add rows to METHOD_BAD for {sorted(missing)}"
    missing = numeric_fields(PretrainConfig) - {f for f, _, _ in PRETRAIN_BAD}
    assert not missing, f"PretrainConfig: add rows to PRETRAIN_BAD for {sorted(missing)}"


def test_good_edges_still_load():
    cfg = load_config(RunConfig, None, ["train.max_steps=0", "train.lr=0", "train.warmup_steps=0",
                                        "train.max_grad_norm=null", "eval.max_examples=null", "train.seed=0"])
    assert cfg.train.lr == 0  # nothing is trained: the zero-shot configs say lr 0
    with pytest.raises(ConfigError, match="train.lr: must be > 0"):
        load_config(RunConfig, None, ["train.max_steps=5", "train.lr=0"])


def test_every_registered_method_refuses_non_finite_numbers():
    """Whatever methods others add, a float field never takes nan or inf."""
    from peftlab.methods import get_method, method_names

    for name in method_names():
        for field in sorted(numeric_fields(get_method(name))):
            if typing.get_type_hints(get_method(name))[field] is float:
                with pytest.raises(ConfigError, match="expected a finite number"):
                    load_config(RunConfig, None, [f"methods=[{{name: {name}, {field}: .inf}}]"])


# ------------------------------------------------------------------------- empty and duplicated


def test_empty_config_file_is_an_error(tmp_path):
    for text in ("", "\n\n", "# only a comment\n"):
        p = tmp_path / "empty.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError, match=r"empty.yaml: config file is empty"):
            load_config(RunConfig, p)


def test_duplicated_key_names_both_lines(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("train:\n  lr: 0.1\n  max_steps: 3\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:4: duplicate key 'lr' \(first set on line 2\)"):
        load_config(RunConfig, p)
    p.write_text("methods:\n  - name: lora\n    r: 4\n    r: 8\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:4: duplicate key 'r' \(first set on line 3\)"):
        load_config(RunConfig, p)
    p.write_text("model: {name: mini-t5}\nmodel: {name: mini-llama}\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:2: duplicate key 'model'"):
        load_config(RunConfig, p)


# -------------------------------------------------------------------------- who gets the blame


def test_a_command_line_value_is_never_blamed_on_the_file(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("methods:\n  - name: lora\n    r: 4\ntrain:\n  max_steps: 3\n")
    # a check over a whole list item (lora's r) lands on the item's line: the override is named too
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, p, ["methods.0.r=0"])
    assert "override 'methods.0.r=0'" in str(e.value), str(e.value)
    # a check over two fields (the budget) where the command line emptied one of them
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, p, ["train.max_steps=null"])
    assert "override 'train.max_steps=null'" in str(e.value) and "set max_steps, max_seconds" in str(e.value)
    # and a value from the file is still blamed on its line
    p.write_text("train:\n  max_steps: 3\n  lr: -1\n")
    with pytest.raises(ConfigError, match=r"run.yaml:3: train.lr: must be > 0, got -1.0$"):
        load_config(RunConfig, p, ["train.seed=3"])
