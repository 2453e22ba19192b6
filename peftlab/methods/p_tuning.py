"""P-tuning: "GPT Understands, Too" (Liu et al., 2021, arXiv:2103.10385), v1.

n pseudo-prompt embeddings ``h`` (n, d) are not used directly: a prompt encoder maps them to the
virtual tokens, which are prepended to the embedded input ``E(x)`` (B, T, d) of a frozen model::

    mlp:   P = W_3 ReLU(W_2 ReLU(W_1 h))                      W_1: (k, d), W_2: (k, k), W_3: (d, k)
    lstm:  P = W_5 ReLU(W_4 [LSTM_fwd(h); LSTM_bwd(h)])       LSTM: d -> k per direction, L layers
                                                               W_4: (2k, 2k), W_5: (d, 2k)
    h_0 = [P; E(x)]                                            (B, n + T, d)

(biases omitted; k = ``hidden``, default d), the paper's bidirectional LSTM + ReLU MLP, with HF
peft's ``PromptEncoder`` layout so weights copy across. The encoder runs once per forward on the
n rows (peft runs it on B copies). Trainable parameters: n·d + the encoder:

    mlp:   d·k + k + k·k + k + k·d + d
    lstm:  2 · Σ_l 4k·(in_l + k + 2), in_1 = d, in_l = 2k;  + 2k·2k + 2k + 2k·d + d

``fold(model)`` replaces the encoder by its output after training: plain virtual tokens (n · d
parameters), the same outputs, and a saved adapter without the encoder (config ``folded: true``).
Placement, masks, labels and generation as in ``peftlab.methods.hooks.virtual_tokens``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

from peftlab.config import Alias, FieldError
from peftlab.methods.base import MethodConfig, peft_choice
from peftlab.methods.hooks.virtual_tokens import VirtualTokens, attach


class PromptEncoder(VirtualTokens):
    def __init__(self, n: int, d: int, encoder: str, hidden: int, lstm_layers: int, dropout: float, folded: bool):
        super().__init__(n, "p_tuning")
        self.embedding = nn.Parameter(torch.randn(n, d))  # h: (n, d), N(0, 1) as nn.Embedding / peft
        self.lstm = None
        self.mlp = None
        if folded:
            return
        if encoder == "lstm":
            self.lstm = nn.LSTM(d, hidden, num_layers=lstm_layers, dropout=dropout, bidirectional=True,
                                batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, d))
        else:
            self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, d))

    @property
    def folded(self) -> bool:
        return self.mlp is None

    def prompts(self) -> torch.Tensor:
        if self.mlp is None:
            return self.embedding
        h = self.embedding.unsqueeze(0)  # (1, n, d)
        if self.lstm is not None:
            h = self.lstm(h)[0]  # (1, n, 2k)
        return self.mlp(h)[0]  # (n, d)

    @torch.no_grad()
    def fold(self) -> None:
        """Replace the encoder by its output: ``prompts()`` unchanged, n·d parameters left."""
        if self.folded:
            return
        p = self.eval_prompts()  # no LSTM dropout in the folded tokens
        self.lstm = self.mlp = None
        self.embedding = nn.Parameter(p, requires_grad=self.embedding.requires_grad)

    def extra_repr(self) -> str:
        n, d = self.embedding.shape
        return f"n={n}, d={d}, folded={self.folded}"


@dataclass(frozen=True)
class PTuningConfig(MethodConfig):
    name = "p_tuning"
    needs_table = "where the input embeddings and each stack's inputs are"  # from a family table
    # HF peft's names for the same fields (its PromptEncoderConfig)
    aliases = {"encoder_reparameterization_type": Alias("encoder", peft_choice({"MLP": "mlp", "LSTM": "lstm"})),
               "encoder_hidden_size": "hidden", "encoder_num_layers": "lstm_layers", "encoder_dropout": "dropout"}
    cannot_merge = "its virtual tokens are extra inputs in front of the text, not a change to any weight"
    lr_grid = (1e-3, 3e-3, 1e-2, 3e-2)  # a prompt encoder: between prompt tuning and the adapters
    num_virtual_tokens: int = 20  # n: number of virtual tokens
    encoder: Literal["mlp", "lstm"] = "mlp"  # prompt encoder: 3-layer ReLU MLP, or the paper's bi-LSTM + MLP
    hidden: Optional[int] = None  # k: encoder width; None = the model width d
    lstm_layers: int = 2  # LSTM layers (lstm encoder only)
    dropout: float = 0.0  # dropout between LSTM layers (lstm encoder with lstm_layers > 1 only)
    folded: bool = False  # true once fold() replaced the encoder by its output (saved adapters)

    def __post_init__(self):
        if self.num_virtual_tokens < 1:
            raise FieldError("num_virtual_tokens", f"num_virtual_tokens must be >= 1 (no virtual tokens is no "
                                                   f"method), got {self.num_virtual_tokens}")
        if self.encoder not in ("mlp", "lstm"):
            raise FieldError("encoder", f"encoder must be 'mlp' or 'lstm', got {self.encoder!r}")
        if self.hidden is not None and self.hidden < 1:
            raise FieldError("hidden", f"hidden must be >= 1 or null, got {self.hidden}")
        if self.lstm_layers < 1:
            raise FieldError("lstm_layers", f"lstm_layers must be >= 1, got {self.lstm_layers}")
        if self.encoder != "lstm" and self.lstm_layers != 2:
            raise FieldError("lstm_layers", "lstm_layers is only used with encoder: lstm (the MLP has 3 layers)")
        if not 0 <= self.dropout < 1:
            raise FieldError("dropout", f"dropout must be in [0, 1), got {self.dropout}")
        if self.dropout and (self.encoder != "lstm" or self.lstm_layers < 2):
            raise FieldError("dropout", "dropout acts between LSTM layers: it needs encoder: lstm and lstm_layers >= 2")

    def describe(self) -> str:
        return f"P-tuning {self.encoder} n={self.num_virtual_tokens}" + (" (folded)" if self.folded else "")

    def to_peft(self, model: nn.Module, family) -> tuple[dict, dict]:
        from peftlab.methods.hooks.virtual_tokens import peft_prompt_form

        d = getattr(model.config, family.hidden_size)
        return peft_prompt_form(model, family, "P_TUNING", dict(
            encoder_reparameterization_type=self.encoder.upper(), encoder_num_layers=self.lstm_layers,
            encoder_hidden_size=self.hidden or d, encoder_dropout=self.dropout))

    def fold(self, model: nn.Module, family):
        """The encoder's output as plain virtual tokens (the run path calls this before saving)."""
        found = [m for m in model.modules() if isinstance(m, PromptEncoder) and not m.folded]
        if self.folded or not found:
            return None
        for m in found:
            m.fold()
        return dataclasses.replace(self, folded=True), found

    def apply(self, model: nn.Module, family) -> list[nn.Module]:
        d = getattr(model.config, family.hidden_size)
        with torch.device(model.get_submodule(family.embeddings).weight.device):  # built in place (meta: no init)
            module = PromptEncoder(self.num_virtual_tokens, d, self.encoder, self.hidden or d, self.lstm_layers,
                                   self.dropout, self.folded)
        return [attach(model, family, module)]


def fold(model: nn.Module) -> int:
    """Fold the model's P-tuning encoder into plain virtual tokens; its ``PeftState`` then records
    ``folded: true`` and the one remaining parameter, so ``save_adapter`` writes n·d numbers and
    ``load_adapter`` rebuilds the folded form. Returns how many encoders were folded (0 or 1)."""
    from peftlab.methods.state import logical_numel, peft_state

    found = [(name, m) for name, m in model.named_modules() if isinstance(m, PromptEncoder) and not m.folded]
    for _, m in found:
        m.fold()
    state = peft_state(model)
    if found and state is not None:
        ((path, module),) = found  # one virtual-token method per model (virtual_tokens.attach)
        i = next(i for i, c in enumerate(state.configs) if isinstance(c, PTuningConfig))
        key = list(state.param_names)[i]  # one key per config, in order (apply_methods)
        state.configs[i] = dataclasses.replace(state.configs[i], folded=True)
        state.param_names[key] = [f"{path}.{n}" for n, _ in module.named_parameters()]
        state.total_params = sum(logical_numel(p) for p in model.parameters())
    return len(found)
