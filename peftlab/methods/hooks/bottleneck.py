"""Bottleneck adapters: the module and placement that Houlsby, Pfeiffer and parallel adapters share,
and AdapterDrop. The methods themselves are ``houlsby.py``, ``pfeiffer.py`` and ``parallel.py``.

A bottleneck maps the model width d down to m = d // reduction_factor and back::

    A(x) = LN_after( s · up(f(down(LN_before(x)))) )     x: (B, T, d)
    down: (m × d) + m,  up: (d × m) + d,  LN_*: optional new LayerNorms (2d each),  s: scaling

Every sub-layer of a pre-norm block (T5, LLaMA) is a residual branch ``h ← h + y`` with
``y = branch(norm(h))`` (T5: the sub-layer's output after its dropout; LLaMA: the attention or MLP
output). The adapter reads one of three inputs and its output joins the branch::

    houlsby   reads "branch":    h ← h + y + A(y)         serial, on the sub-layer's output
    pfeiffer  reads "sum":       h ← h + y + A(h + y)     serial, on the residual sum
    parallel  reads "residual":  h ← h + y + A(h)         beside the sub-layer, on its input h

This is exactly where AdapterHub ``adapters`` 1.3 puts them on T5 and LLaMA (its bottleneck layer
gets ``hidden_states = dropout(y)``, ``residual_input = h``, ``layer_norm=None``):
``DoubleSeqBnConfig`` (``original_ln_before=False``), ``SeqBnConfig`` (``original_ln_before=True``,
``residual_before_ln=True``) and ``ParBnConfig`` (the parallel adapter reads ``residual_input``).
``tests/methods/test_adapters_parity.py`` checks the logits against fixtures made with ``adapters``.
Injection is by hooks (docs/design.md, hook point 2): a pre-hook on the sub-layer's norm records h, a
hook on the branch output adds the adapter; base modules and parameter names are untouched.

Init ``zero_up`` (default: down Kaiming-uniform, up = 0; AdapterHub's ``mam_adapter``) makes A = 0,
so the model starts exactly as the base model. ``houlsby`` is the paper's near-identity init
(truncated normal, std 1e-2) and ``bert`` AdapterHub's default for Houlsby/Pfeiffer (normal,
std 0.02); both start near, not at, the base model.

AdapterDrop (Rücklé et al., 2021, "AdapterDrop: On the Efficiency of Adapters in Transformers",
arXiv:2010.11918): ``drop_lowest: n`` puts no adapter in the n lowest blocks of each stack, at
training and at inference, so those blocks run at base-model cost (and, with several tasks, their
computation could be shared). It is a field of the adapter configs rather than a method of its own:
it only decides which blocks get an adapter, so the trainable count stays exact and a saved
adapter reloads by itself; a separate method would have to find and remove another method's
modules after the fact. ``peftlab speed benchmarks/speed/mini-t5-adapterdrop.yaml`` measures what
it saves at inference.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.config import FieldError
from peftlab.errors import ModelError
from peftlab.methods.base import AdapterModule, MethodConfig

def _gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


def _identity(x):
    return x


# transformers' names (what AdapterHub configs say) -> functions (named ones: models stay picklable)
ACTIVATIONS = {
    "relu": F.relu, "gelu": F.gelu, "gelu_new": _gelu_tanh, "swish": F.silu, "silu": F.silu,
    "tanh": torch.tanh, "leakyrelu": F.leaky_relu, "identity": _identity,
}
SUBLAYERS = ("self", "cross", "ffn")
INITS = ("zero_up", "houlsby", "bert")


class BranchAdapter(AdapterModule):
    """A module on one residual branch: ``forward(x)`` is ``A(x)``, ``reads`` says what x is (see the
    module docstring), and the two hooks that ``place`` registers put ``A`` on the branch. Bottleneck
    adapters subclass it, and so do the adapters of HyperFormer and UniPELT."""

    reads: str = "branch"
    _h = None  # the residual stream h, recorded by the norm's pre-hook for this forward

    def record_residual(self, norm, args):
        """Forward pre-hook on the sub-layer's norm: its input is the residual stream h."""
        self._h = args[0]

    def add_to_branch(self, module, args, output):
        """Forward hook on the branch output y: returns y + A(input)."""
        y = output[0] if isinstance(output, tuple) else output
        if self.reads == "branch":
            x = y
        else:
            h, self._h = self._h, None
            if h is None:
                raise RuntimeError(f"{type(module).__name__} ran without its norm: the adapter has no residual "
                                   f"input h (call the whole block, not the sub-layer alone)")
            x = h if self.reads == "residual" else h + y
        y = y + self(x).to(y.dtype)
        return (y,) + tuple(output[1:]) if isinstance(output, tuple) else y


class BottleneckAdapter(BranchAdapter):
    """``A(x)`` on one residual branch; ``reads`` says what it reads (see the module docstring)."""

    def __init__(self, d: int, m: int, cfg: "BottleneckConfig", norm: nn.Module, device=None):
        super().__init__()
        self.reads, self.scaling = cfg.reads, cfg.scaling
        self.ln_before = nn.LayerNorm(d, device=device) if cfg.ln_before else None
        self.down = nn.Linear(d, m, device=device)  # (m, d)
        self.up = nn.Linear(m, d, device=device)  # (d, m)
        self.act = ACTIVATIONS[cfg.nonlinearity]
        self.ln_after = nn.LayerNorm(d, device=device) if cfg.ln_after else None
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else None
        self._norms = [norm] if cfg.train_norms else []  # a list: not registered, keeps base names
        with torch.no_grad():
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.bias)
            if cfg.init == "zero_up":
                nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
                nn.init.zeros_(self.up.weight)
            else:
                for w in (self.down.weight, self.up.weight):
                    if cfg.init == "houlsby":
                        nn.init.trunc_normal_(w, std=1e-2, a=-2e-2, b=2e-2)
                    else:
                        nn.init.normal_(w, std=0.02)

    def adapter_parameters(self):
        yield from self.parameters()
        for norm in self._norms:
            yield from norm.parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.down.weight
        if x.dtype != w.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(w.dtype)  # e.g. a bf16 base with fp32 adapters
        if self.ln_before is not None:
            x = self.ln_before(x)
        z = self.up(self.act(self.down(x)))  # (B, T, d)
        if self.scaling != 1.0:
            z = z * self.scaling
        if self.dropout is not None:
            z = self.dropout(z)
        return self.ln_after(z) if self.ln_after is not None else z

    def extra_repr(self) -> str:
        return f"reads={self.reads}, scaling={self.scaling:g}, train_norms={bool(self._norms)}"


def _tuple(name: str, value) -> None:
    if isinstance(value, str):  # a bare string would be iterated char by char
        raise FieldError(name, f"{name} must be a list, got the string {value!r}")


@dataclass(frozen=True)
class BottleneckConfig(MethodConfig):
    cannot_merge = "its bottleneck adapters are extra layers after or beside the sub-layers"
    """Fields every bottleneck adapter has; subclasses set ``name``, ``reads`` and defaults."""

    reads: ClassVar[Literal["branch", "sum", "residual"]] = "branch"  # what the adapter reads
    reduction_factor: float = 16.0  # bottleneck m = d // reduction_factor (at least 1)
    bottleneck: Optional[int] = None  # m itself; overrides reduction_factor
    nonlinearity: str = "swish"  # f: relu, gelu, gelu_new, swish/silu, tanh, leakyrelu, identity
    sublayers: tuple[str, ...] = ("self", "ffn")  # branches to adapt: self, cross (T5 decoder), ffn
    scaling: float = 1.0  # s, the fixed scale of the adapter output (He et al.)
    ln_before: bool = False  # a new trainable LayerNorm on the adapter input
    ln_after: bool = False  # a new trainable LayerNorm on the adapter output
    train_norms: bool = False  # also train the base norms before the adapted sub-layers (Houlsby)
    init: Literal["zero_up", "houlsby", "bert"] = "zero_up"  # zero_up: identity at init
    dropout: float = 0.0  # dropout on the adapter output
    stacks: Optional[tuple[str, ...]] = None  # e.g. ("encoder",); None = every stack
    layers: Optional[tuple[int, ...]] = None  # block indices (within each stack); None = all
    drop_lowest: int = 0  # AdapterDrop: no adapter in the n lowest blocks of each stack
    # A model without a family table (peftlab.models.generic): where each adapted sub-layer's branch
    # ends, as dotted names inside a block (the module whose output is added back to h: BERT's
    # {self: attention.output.dropout, ffn: output.dropout}), and, for an adapter that reads h
    # (pfeiffer, parallel) or trains the norms, the norm whose input is h (Phi-3's {self:
    # input_layernorm, ffn: post_attention_layernorm}). A family table knows both: leave them null.
    branches: Optional[dict[str, str]] = None
    pre_norms: Optional[dict[str, str]] = None

    def __post_init__(self):
        if not self.reduction_factor > 0:
            raise FieldError("reduction_factor", f"reduction_factor must be > 0, got {self.reduction_factor}")
        if self.bottleneck is not None and self.bottleneck < 1:
            raise FieldError("bottleneck", f"bottleneck must be >= 1 or null, got {self.bottleneck}")
        if self.nonlinearity not in ACTIVATIONS:
            raise FieldError("nonlinearity", f"nonlinearity must be one of {', '.join(ACTIVATIONS)}, "
                                             f"got {self.nonlinearity!r}")
        _tuple("sublayers", self.sublayers)
        if not self.sublayers or any(s not in SUBLAYERS for s in self.sublayers):
            raise FieldError("sublayers", f"sublayers must name some of {', '.join(SUBLAYERS)}, got {list(self.sublayers)}")
        if not self.scaling > 0:
            raise FieldError("scaling", f"scaling must be > 0, got {self.scaling}")
        if self.init not in INITS:
            raise FieldError("init", f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if not 0 <= self.dropout < 1:
            raise FieldError("dropout", f"dropout must be in [0, 1), got {self.dropout}")
        _tuple("stacks", self.stacks)
        _tuple("layers", self.layers)
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise FieldError("layers", f"layers must be block indices >= 0 (or null for all), got {list(self.layers)}")
        if self.drop_lowest < 0:
            raise FieldError("drop_lowest", f"drop_lowest must be >= 0, got {self.drop_lowest}")
        missing = [s for s in self.sublayers if s not in (self.branches or {})]
        if self.branches is not None and missing:
            raise FieldError("branches", f"branches must name each of sublayers {list(self.sublayers)}; "
                                         f"{', '.join(missing)} is missing")
        stray = [s for s in self.pre_norms or {} if s not in self.sublayers]
        if stray:
            raise FieldError("pre_norms", f"pre_norms names {', '.join(stray)}, not among sublayers {list(self.sublayers)}")

    def describe(self) -> str:
        size = f"m={self.bottleneck}" if self.bottleneck else f"rf={self.reduction_factor:g}"
        return f"{self.name.capitalize()} {size}" + (f" AdapterDrop {self.drop_lowest}" if self.drop_lowest else "")

    def bottleneck_size(self, d: int) -> int:
        return self.bottleneck or max(1, int(d // self.reduction_factor))

    def placements(self, model: nn.Module, family) -> list[tuple[str, int, object]]:
        """``(stack, index, block)`` of the blocks that get adapters; errors name the field."""
        return placements(model, family, self.name, self.sublayers, self.stacks, self.layers, self.drop_lowest)

    def branch_family(self, model: nn.Module, family):
        """``family``; for a model without a table, that family with the branches this config names."""
        if family.table:
            if self.branches is not None or self.pre_norms is not None:
                raise ModelError(f"{self.name}: branches and pre_norms are for models without a family table; "
                                 f"the {family.name} table places the adapters (leave them null)")
            return family
        first = next(iter(family.stacks.values())) + ".0"
        if not self.branches:
            raise ModelError(f"{self.name}: this {family.name} model has no peftlab family table, so name where "
                             f"each adapted sub-layer's branch ends: branches: {{self: ..., ffn: ...}}, each a "
                             f"module's dotted path inside a block (the blocks are {first}, ...)")
        pre = self.pre_norms or {}
        why = ("it reads the residual stream h" if self.reads != "branch" else
               "train_norms trains the norm before each sub-layer" if self.train_norms else None)
        unnamed = [s for s in self.sublayers if not pre.get(s)]
        if why and unnamed:
            raise ModelError(f"{self.name}: {why}: name the norm whose input is h in pre_norms for "
                             f"{', '.join(unnamed)} (a post-norm model such as BERT has none: only houlsby "
                             f"without train_norms fits it)")
        for _, i, block in family.blocks(model, self.stacks):
            for field, names in (("branches", self.branches), ("pre_norms", pre)):
                for kind, path in names.items():
                    try:
                        block.get_submodule(path)
                    except AttributeError:
                        raise ModelError(f"{self.name}: {field}.{kind}: block {i} of this {family.name} model "
                                         f"has no module {path!r}") from None
        return dataclasses.replace(family, pre_norms={s: pre.get(s, "") for s in self.sublayers},
                                   branch_outputs={s: self.branches[s] for s in self.sublayers})

    def apply(self, model: nn.Module, family) -> list[nn.Module]:
        family = self.branch_family(model, family)
        d = getattr(model.config, family.hidden_size)
        m = self.bottleneck_size(d)
        device = next(model.parameters()).device
        return place(model, family, self.name, self.sublayers,
                     lambda stack, i, kind, norm: BottleneckAdapter(d, m, self, norm, device=device),
                     self.stacks, self.layers, self.drop_lowest)


def placements(model: nn.Module, family, method: str, sublayers, stacks=None, layers=None,
               drop_lowest: int = 0) -> list[tuple[str, int, object]]:
    """``(stack, index, block)`` of the blocks of ``stacks`` (None = all) whose ``sublayers`` get
    an adapter: ``layers`` (None = all) minus AdapterDrop's ``drop_lowest``; errors name ``method``."""
    if not family.pre_norms:
        raise ModelError(f"{method}: the {family.name} family table names no residual branches")
    missing = [s for s in sublayers if s not in family.pre_norms]
    if missing:
        raise ModelError(f"{method}: sublayers {missing} do not exist in {family.name} blocks "
                         f"(it has: {', '.join(family.pre_norms)})")
    for s in stacks or ():
        if s not in family.stacks:
            raise ModelError(f"{method}: unknown stack {s!r} for {family.name} (has: {', '.join(family.stacks)})")
    blocks = family.blocks(model, stacks)
    for stack in {s for s, _, _ in blocks}:
        n = sum(1 for s, _, _ in blocks if s == stack)
        if layers is not None and max(layers) >= n:
            raise ModelError(f"{method}: layers {list(layers)} out of range: the {stack} has {n} blocks")
        if drop_lowest >= n:
            raise ModelError(f"{method}: drop_lowest={drop_lowest} leaves no adapter in the {stack}'s {n} blocks")
    return [(s, i, b) for s, i, b in blocks if i >= drop_lowest and (layers is None or i in layers)]


def place(model: nn.Module, family, method: str, sublayers, make, stacks=None, layers=None,
          drop_lowest: int = 0) -> list[BranchAdapter]:
    """Put ``make(stack, index, kind, norm)`` (a ``BranchAdapter``) on each selected residual branch
    (see ``placements``), as ``<parent>.<method>_<kind>``, and register its hooks (hook point 2)."""
    injected = []
    for stack, i, block in placements(model, family, method, sublayers, stacks, layers, drop_lowest):
        for kind in sublayers:
            for parent_name, norm, branch in family.residual_branches(block, kind):
                parent = block.get_submodule(parent_name) if parent_name else block
                attr = f"{method}_{kind}"
                if hasattr(parent, attr):
                    raise ModelError(f"{method}: {stack} block {i} already has a {method} adapter on {kind}")
                adapter = make(stack, i, kind, norm)
                parent.add_module(attr, adapter)
                if adapter.reads != "branch":
                    norm.register_forward_pre_hook(adapter.record_residual)
                branch.register_forward_hook(adapter.add_to_branch)
                injected.append(adapter)
    return injected
