"""Prompt tuning: "The Power of Scale for Parameter-Efficient Prompt Tuning" (Lester et al., 2021,
arXiv:2104.08691).

A trainable soft prompt ``P`` (n, d) of n virtual tokens is prepended to the embedded input
``E(x)`` (B, T, d) of a frozen model::

    h_0 = [P; E(x)]        (B, n + T, d)

On T5 it goes in front of the encoder input, on a decoder-only model in front of the decoder input
(``peftlab.methods.hooks.virtual_tokens`` says how masks, labels, positions and generation follow).
Trainable parameters: n · d. The outputs change from the first step (no identity at init).

Initialisation (``init``), as in the paper's ablation and HF peft's ``prompt_tuning_init``:

* ``random``: P ~ N(0, σ²) with σ the standard deviation of the model's embedding matrix (or
  ``init_std``): the paper's random-uniform init is tuned to T5's embedding scale; matching the
  model's own scale works for LLaMA too, whose embeddings are ~50x smaller.
* ``vocab``: rows of the embedding matrix for n token ids drawn uniformly (the paper drew from the
  5,000 most frequent tokens; without token counts, peft and peftlab draw from the whole vocabulary).
* ``text``: the embeddings of ``init_text``, tokenised with special tokens and repeated or cut to n
  tokens, exactly as peft does (e.g. a task description "Write the docstring of this function").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

from peftlab.config import Alias, FieldError
from peftlab.errors import ModelError
from peftlab.methods.base import MethodConfig, peft_choice
from peftlab.methods.hooks.virtual_tokens import VirtualTokens, attach


class SoftPrompt(VirtualTokens):
    def __init__(self, init: torch.Tensor, method: str = "prompt_tuning"):
        super().__init__(init.shape[0], method)
        self.prompt = nn.Parameter(init.float())  # P: (n, d)

    def prompts(self) -> torch.Tensor:
        return self.prompt

    def extra_repr(self) -> str:
        return f"n={self.prompt.shape[0]}, d={self.prompt.shape[1]}"


@dataclass(frozen=True)
class PromptTuningConfig(MethodConfig):
    name = "prompt_tuning"
    needs_table = "where the input embeddings and each stack's inputs are"  # from a family table
    # HF peft's names for the same fields
    aliases = {"prompt_tuning_init": Alias("init", peft_choice({"RANDOM": "random", "TEXT": "text", "SAMPLE_VOCAB": "vocab"})),
               "prompt_tuning_init_text": "init_text", "tokenizer_name_or_path": "tokenizer"}
    cannot_merge = "its virtual tokens are extra inputs in front of the text, not a change to any weight"
    lr_grid = (3e-3, 1e-2, 3e-2, 1e-1)  # soft prompts train at large rates (Lester et al.: 0.3 with Adafactor)
    num_virtual_tokens: int = 20  # n: soft-prompt length (the paper's sweet spot is 20-100 on T5)
    init: Literal["random", "vocab", "text"] = "random"  # how P starts (see the module docstring)
    init_text: Optional[str] = None  # init "text": the text whose token embeddings start P
    tokenizer: Optional[str] = None  # init "text": short name, directory or hub id; None = the model's own
    init_std: Optional[float] = None  # init "random": std of P; None = the embedding matrix's std

    def __post_init__(self):
        if self.num_virtual_tokens < 1:
            raise FieldError("num_virtual_tokens", f"num_virtual_tokens must be >= 1 (no virtual tokens is no "
                                                   f"method), got {self.num_virtual_tokens}")
        if self.init not in ("random", "vocab", "text"):
            raise FieldError("init", f"init must be 'random', 'vocab' or 'text', got {self.init!r}")
        if self.init == "text" and not (self.init_text or "").strip():
            raise FieldError("init_text", "init 'text' needs init_text: the text whose embeddings start the prompt")
        if self.init != "text" and (self.init_text is not None or self.tokenizer is not None):
            which = "init_text" if self.init_text is not None else "tokenizer"
            raise FieldError(which, f"{which} is only used with init: text (init is {self.init!r})")
        if self.init_std is not None and not (self.init_std > 0 and math.isfinite(self.init_std)):
            raise FieldError("init_std", f"init_std must be a positive number, got {self.init_std}")
        if self.init_std is not None and self.init != "random":
            raise FieldError("init_std", f"init_std is only used with init: random (init is {self.init!r})")

    def describe(self) -> str:
        return f"prompt tuning n={self.num_virtual_tokens}"

    def to_peft(self, model: nn.Module, family) -> tuple[dict, dict]:
        from peftlab.methods.hooks.virtual_tokens import peft_prompt_form

        # peft re-initialises nothing in inference mode
        return peft_prompt_form(model, family, "PROMPT_TUNING", {"prompt_tuning_init": "RANDOM"})

    @classmethod
    def from_peft(cls, config: dict, tensors: dict, family) -> tuple["PromptTuningConfig", dict] | None:
        """peft's ``PROMPT_TUNING`` adapter: its ``prompt_embeddings`` (n, d) as the soft prompt, in front
        of the encoder (T5) or the decoder's input; prompts in front of T5's decoder too
        (``num_transformer_submodules: 2``, peft's default for seq2seq) have no peftlab form."""
        from peftlab.methods.hooks.virtual_tokens import ATTR

        if config.get("peft_type") != "PROMPT_TUNING" or cls.name != "prompt_tuning":  # not a subclass's
            return None
        seq2seq = config.get("task_type") == "SEQ_2_SEQ_LM"  # peft's default for it: 2 (null in the file)
        if (config.get("num_transformer_submodules") or (2 if seq2seq else 1)) != 1:
            raise ModelError("import prompt_tuning: the adapter puts prompts in front of the decoder too "
                             "(num_transformer_submodules: 2); peftlab's prompt tuning prepends to the encoder only")
        n, prompts = int(config["num_virtual_tokens"]), tensors.get("prompt_embeddings")
        if prompts is None or set(tensors) != {"prompt_embeddings"} or prompts.dim() != 2 or prompts.shape[0] != n:
            raise ModelError(f"import prompt_tuning: expected only prompt_embeddings of shape ({n}, d), got "
                             f"{ {k: tuple(v.shape) for k, v in tensors.items()} }")
        host = f"{family.encoder}." if family.kind == "seq2seq" else ""
        return cls(num_virtual_tokens=n), {f"{host}{ATTR}.prompt": prompts}

    def apply(self, model: nn.Module, family) -> list[nn.Module]:
        table = model.get_submodule(family.embeddings).weight  # (V, d)
        return [attach(model, family, SoftPrompt(self._init(model, table).to(table.device)))]

    @torch.no_grad()
    def _init(self, model, table: torch.Tensor) -> torch.Tensor:
        n, (vocab, d) = self.num_virtual_tokens, table.shape
        if self.init == "random":
            std = self.init_std if self.init_std is not None else table.float().std()
            return torch.randn(n, d, device=table.device) * std
        if self.init == "vocab":
            ids = torch.randint(0, vocab, (n,))
        else:
            ids = torch.tensor(self._text_ids(model, vocab))
        return table[ids.to(table.device)].float().clone()

    def _text_ids(self, model, vocab: int) -> list[int]:
        from transformers import AutoTokenizer

        from peftlab.models.loading import short_names

        source = self.tokenizer or getattr(model.config, "name_or_path", "")
        if not source:
            raise ModelError("prompt_tuning: init 'text' needs a tokenizer and this model was not loaded from a "
                             "directory or hub id; set the method's tokenizer (e.g. tokenizer: mini-t5)")
        try:
            tok = AutoTokenizer.from_pretrained(str(short_names().get(source, source)))
        except (OSError, ValueError) as e:
            raise ModelError(f"prompt_tuning: could not load the tokenizer {source!r}: {e}") from None
        ids = tok(self.init_text)["input_ids"]
        if not ids or max(ids) >= vocab:
            raise ModelError(f"prompt_tuning: tokenizer {source!r} gives ids {ids[:8]} for init_text, which do "
                             f"not fit this model's {vocab}-token embedding")
        reps = math.ceil(self.num_virtual_tokens / len(ids))  # repeat, then cut to n (as peft)
        return (ids * reps)[: self.num_virtual_tokens]
