"""HyperFormer++: Karimi Mahabadi, Ruder, Dehghani & Henderson, "Parameter-efficient Multi-task
Fine-tuning for Transformers via Shared Hypernetworks" (ACL 2021, arXiv:2106.04489).

Several tasks train together. Every adapter (after attention and after the FFN of every block, where
Houlsby adapters sit: ``h ← h + y + A(y)``) gets its weights from a shared hypernetwork, conditioned
on the task τ, the block l and the adapter's position p (self-attention, cross-attention, FFN)::

    I   = LN(W_2 ReLU(W_1 [z_τ; e_l; e_p] + b_1) + b_2)          z_τ, e_l, e_p: (t,)   I: (p_dim,)
    D, b_D, U, b_U, γ, β = split(W_g I + b_g)                     D: (m, d)  U: (d, m)  γ, β: (d,)
    A(y) = γ ⊙ norm(U f(D y + b_D) + b_U) + β                     y: (B, T, d); norm: LayerNorm, no affine

(the paper's task projector h_I, adapter hypernetwork h_A and conditional layer norm h_LN, as its
reference code ``AdapterLayersOneHyperNetController``; ``ln_before`` adds a generated norm on y).
As in that code, each stack has its own hypernetwork (T5: encoder and decoder; ``hypernetworks:
model`` shares one across stacks) while the task embeddings z_τ are shared by all. Only z_τ belongs
to one task; everything else is shared, and the paper also trains the base model's layer norms
(``train_norms``). Trainable parameters, with S hypernetworks of L_s adapted blocks each, P positions
and G = 2·d·m + m + d + 2d·(ln_before + ln_after)::

    T·t  +  Σ_s [ (L_s + P)·t  +  (3t·h + h) + (h·p_dim + p_dim) + 2·p_dim  +  (p_dim + 1)·G ]  [+ norms]
    tasks        layer, position    task projector h_I      its LN      generators (one linear map)

A new task costs t (``add_task``). On T5-base with the paper's settings (t = p_dim = 64, h = 128,
m = d/32, gelu_new, generated LN after) and 8 tasks this is 5,211,056 parameters, 0.29% of T5-base
per task: the paper's figure (``tests/methods/test_hyperformer.py``). ``init: zero`` (default) starts the
generator rows of the last affine map (γ, β; U, b_U without ``ln_after``) at zero, so the model
starts exactly as the base model; ``init: normal`` is the reference's N(0, 10⁻⁴) everywhere.

Task ids: training batches carry ``task_ids`` (B,) (``batch_keys``); a pre-hook on the model takes
them out of the call before the HF model sees them, and the rows of each task run through that
task's adapter (one adapter call per task of the batch). Without ids (``generate``, whose steps cannot
carry a per-row tensor), the adapters use the task set by ``set_task``. In evaluation (no grad) the
generated weights are cached per task and site until a parameter changes.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.config import FieldError
from peftlab.errors import ModelError
from peftlab.methods.base import AdapterModule, MethodConfig
from peftlab.methods.hooks.bottleneck import ACTIVATIONS, SUBLAYERS, BranchAdapter, place, placements

ATTR = "hyperformer"  # model.<ATTR>: the shared hypernetwork


class Generator(nn.Module):
    """One hypernetwork: layer and position embeddings, task projector h_I and its LN, and the
    generator (h_A and h_LN as one linear map) of every adapter of its blocks."""

    def __init__(self, cfg: "HyperFormerConfig", sizes: list[int], layers: int, device=None):
        super().__init__()
        t = cfg.task_dim
        self.layer_embeddings = nn.Embedding(layers, t, device=device)  # e_l, N(0, 1) as nn.Embedding
        self.position_embeddings = nn.Embedding(len(cfg.sublayers), t, device=device)  # e_p
        self.projector = nn.Sequential(nn.Linear(3 * t, cfg.hidden, device=device), nn.ReLU(),
                                       nn.Linear(cfg.hidden, cfg.projected, device=device))
        self.norm = nn.LayerNorm(cfg.projected, eps=1e-6, device=device)  # the reference's epsilon
        self.sizes = sizes
        self.generator = nn.Linear(cfg.projected, sum(sizes), device=device)
        with torch.no_grad():
            for lin in (self.projector[0], self.projector[2], self.generator):
                nn.init.normal_(lin.weight, std=1e-2)  # the reference's linear_layer init
                nn.init.zeros_(lin.bias)
            if cfg.init == "zero":  # the last affine map is zero: A(y) = 0, the base model exactly
                ends = list(itertools.accumulate(sizes))
                first, last = (len(ends) - 3, len(ends) - 1) if cfg.ln_after else (1, 3)  # (γ, β) or (U, b_U)
                self.generator.weight[ends[first]:ends[last]] = 0

    def forward(self, z: torch.Tensor, layer: int, position: int) -> list[torch.Tensor]:
        """Task embeddings z (K, t) -> the site's generated tensors (see ``sizes``), each (K, n)."""
        e = torch.cat([z, self.layer_embeddings.weight[layer].expand(len(z), -1),
                       self.position_embeddings.weight[position].expand(len(z), -1)], dim=-1)  # (K, 3t)
        return list(self.generator(self.norm(self.projector(e))).split(self.sizes, dim=-1))


class HyperNetwork(AdapterModule):
    """The task embeddings z_τ and the hypernetwork(s); runs every site's adapter with each row's task."""

    def __init__(self, cfg: "HyperFormerConfig", d: int, m: int, layers: dict[str, int], norms: list, device=None):
        super().__init__()
        self.d, self.m = d, m
        self.act = ACTIVATIONS[cfg.nonlinearity]
        self.task_embeddings = nn.ParameterList(  # z_τ: one parameter per task (add_task appends)
            [nn.Parameter(torch.randn(cfg.task_dim, device=device)) for _ in range(cfg.tasks)])
        # output layout: [D (m·d) | b_D (m) | U (d·m) | b_U (d) | γ_before β_before | γ_after β_after]
        sizes = [m * d, m, d * m, d] + [d, d] * cfg.ln_before + [d, d] * cfg.ln_after
        self.ln_before, self.ln_after = cfg.ln_before, cfg.ln_after
        self.nets = nn.ModuleDict({k: Generator(cfg, sizes, n, device) for k, n in layers.items()})
        self._norms = norms  # base norms the method trains (a list: not registered, base names kept)
        self.default_task = 0  # the task of a call without task_ids (set_task)
        self._groups = None  # [(task, its rows)] of the current call, from its task_ids (model's pre-hook)
        self._outer = False  # inside a call of the whole model
        self._cache: dict = {}

    def adapter_parameters(self):
        yield from self.parameters()
        for norm in self._norms:
            yield from norm.parameters()

    @property
    def tasks(self) -> int:
        return len(self.task_embeddings)

    def set_task(self, task_id: int) -> None:
        """The task of calls that carry no ``task_ids`` (``generate``; ``score`` calls this)."""
        if not 0 <= int(task_id) < self.tasks:
            raise ModelError(f"hyperformer: task {task_id} does not exist (this model has {self.tasks} tasks)")
        self.default_task = int(task_id)

    def generated(self, net: str, layer: int, position: int, task: int) -> list[torch.Tensor]:
        """The site's generated tensors for ``task`` (see ``Generator.sizes``), each 1-D."""
        return [p[0] for p in self.nets[net](self.task_embeddings[task][None], layer, position)]

    def _weights(self, net: str, layer: int, position: int, task: int) -> list[torch.Tensor]:
        if torch.is_grad_enabled():
            self._cache.clear()
            return self.generated(net, layer, position, task)
        # evaluation: the same tensors until a parameter changes in place or moves (generate's steps)
        version = tuple((p.data_ptr(), p._version) for p in self.parameters())
        if self._cache.get("version") != version:
            self._cache = {"version": version}
        key = (net, layer, position, task)
        if key not in self._cache:
            self._cache[key] = self.generated(net, layer, position, task)
        return self._cache[key]

    def adapt(self, net: str, layer: int, position: int, y: torch.Tensor) -> torch.Tensor:
        """A(y) at one site, for each row's task: y (B, T, d) -> (B, T, d)."""
        groups = self._groups
        if groups is not None and self._rows != y.shape[0]:
            raise ModelError(f"hyperformer: task_ids has {self._rows} rows, the batch {y.shape[0]}")
        if groups is None or len(groups) == 1:  # one task for the whole batch: the default, or the ids'
            task = self.default_task if groups is None else groups[0][0]
            return self._bottleneck(y, self._weights(net, layer, position, task))
        out = None
        for task, rows in groups:  # rows of each task, with that task's adapter (a few tasks per batch)
            part = self._bottleneck(y[rows], self._weights(net, layer, position, task))
            out = part.new_empty(y.shape[:-1] + part.shape[-1:]) if out is None else out
            out[rows] = part
        return out

    def _bottleneck(self, y: torch.Tensor, parts: list[torch.Tensor]) -> torch.Tensor:
        if y.dtype != parts[0].dtype and not torch.is_autocast_enabled(y.device.type):
            y = y.to(parts[0].dtype)  # e.g. a bf16 base with fp32 hypernetwork
        down, b_down, up, b_up, *lns = parts
        if self.ln_before:
            y = _affine_norm(y, lns.pop(0), lns.pop(0))
        z = F.linear(self.act(F.linear(y, down.view(self.m, self.d), b_down)), up.view(self.d, self.m), b_up)
        return _affine_norm(z, lns[0], lns[1]) if self.ln_after else z

    # hooks (bound methods, so a deep copy of the model runs its own hypernetwork)
    def take_task_ids(self, model, args, kwargs):
        """Pre-hook on the model: ``task_ids`` leave the call before the HF model sees them."""
        ids, groups = kwargs.pop("task_ids", None), None
        if ids is not None:
            ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1).tolist()  # one sync per call
            if any(not 0 <= t < self.tasks for t in ids):
                raise ModelError(f"hyperformer: task_ids {sorted(set(ids))} out of range: "
                                 f"this model has {self.tasks} tasks")
            device = self.task_embeddings[0].device
            groups = [(t, torch.tensor([i for i, u in enumerate(ids) if u == t], device=device))
                      for t in sorted(set(ids))] or None
        self._groups, self._outer = groups, True  # (task, its rows) for each task of the batch
        self._rows = len(ids) if ids is not None else 0
        return args, kwargs

    def leave(self, model, args, kwargs, output):
        self._outer = False  # the ids stay: gradient checkpointing recomputes blocks after the call

    def direct_call(self, stack, args):
        """Pre-hook on a stack (T5's encoder, a decoder's body): called from outside the model (T5's
        ``generate`` runs its encoder alone), it uses the default task, not ids of an earlier call."""
        if not self._outer:
            self._groups = None

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}, d={self.d}, m={self.m}, trains_base_norms={bool(self._norms)}"


def _affine_norm(x, gamma, beta):
    return F.layer_norm(x, x.shape[-1:]) * gamma + beta  # gamma, beta: (1, d) or (B, 1, d)


class HyperAdapter(BranchAdapter):
    """One site's adapter: no weights of its own, it asks the shared hypernetwork."""

    reads = "branch"  # the sub-layer's output y, as Houlsby adapters (and the reference) read it

    def __init__(self, hyper: HyperNetwork, net: str, layer: int, position: int):
        super().__init__()
        object.__setattr__(self, "hyper", hyper)  # registered once, on the model
        self.net, self.layer, self.position = net, layer, position

    def adapter_parameters(self):
        return iter(())

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.hyper.adapt(self.net, self.layer, self.position, y)

    def extra_repr(self) -> str:
        return f"hypernetwork={self.net}, layer={self.layer}, position={self.position}"


@dataclass(frozen=True)
class HyperFormerConfig(MethodConfig):
    name = "hyperformer"
    needs_table = "the stacks' sub-layers and norms"  # from a family table
    cannot_merge = "its adapters' weights are generated per task by a hypernetwork"
    batch_keys: ClassVar[tuple[str, ...]] = ("task_ids",)  # training batches carry each row's task
    tasks: Optional[int] = None  # T, task embeddings; None = one per task of the run (data.task)
    hypernetworks: Literal["stack", "model"] = "stack"  # one per stack (the paper's, as its code), or one
    task_dim: int = 64  # t: width of the task, layer and position embeddings
    hidden: int = 128  # h: hidden width of the task projector
    projected: int = 64  # width of I, the projected embedding the generators read
    reduction_factor: float = 32.0  # adapter bottleneck m = d // reduction_factor
    bottleneck: Optional[int] = None  # m itself; overrides reduction_factor
    nonlinearity: str = "gelu_new"  # f
    sublayers: tuple[str, ...] = ("self", "ffn")  # adapter positions: self, cross (T5 decoder), ffn
    ln_before: bool = False  # a generated layer norm on the adapter input
    ln_after: bool = True  # the paper's generated (conditional) layer norm on the adapter output
    train_norms: bool = True  # also train the base model's layer norms, as the paper does
    init: Literal["zero", "normal"] = "zero"  # zero: identity at init; normal: the reference's
    stacks: Optional[tuple[str, ...]] = None  # e.g. ("encoder",); None = every stack
    layers: Optional[tuple[int, ...]] = None  # block indices (within each stack); None = all
    drop_lowest: int = 0  # AdapterDrop: no adapter in the n lowest blocks of each stack

    def __post_init__(self):
        for name, low in (("tasks", 1), ("task_dim", 1), ("hidden", 1), ("projected", 1), ("bottleneck", 1),
                          ("drop_lowest", 0)):
            value = getattr(self, name)
            if value is not None and not value >= low:
                raise FieldError(name, f"{name} must be >= {low}" + (" or null" if name in ("tasks", "bottleneck")
                                                                      else "") + f", got {value}")
        if not self.reduction_factor > 0:
            raise FieldError("reduction_factor", f"reduction_factor must be > 0, got {self.reduction_factor}")
        if self.nonlinearity not in ACTIVATIONS:
            raise FieldError("nonlinearity", f"nonlinearity must be one of {', '.join(ACTIVATIONS)}, "
                                             f"got {self.nonlinearity!r}")
        for name in ("sublayers", "stacks", "layers"):
            if isinstance(getattr(self, name), str):
                raise FieldError(name, f"{name} must be a list, got the string {getattr(self, name)!r}")
        if not self.sublayers or any(s not in SUBLAYERS for s in self.sublayers) or len(set(self.sublayers)) < len(self.sublayers):
            raise FieldError("sublayers", f"sublayers must name some of {', '.join(SUBLAYERS)} once each, "
                                          f"got {list(self.sublayers)}")
        if self.hypernetworks not in ("stack", "model"):
            raise FieldError("hypernetworks", f"hypernetworks must be 'stack' or 'model', got {self.hypernetworks!r}")
        if self.init not in ("zero", "normal"):
            raise FieldError("init", f"init must be 'zero' or 'normal', got {self.init!r}")
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise FieldError("layers", f"layers must be block indices >= 0 (or null for all), got {list(self.layers)}")

    def describe(self) -> str:
        size = f"m={self.bottleneck}" if self.bottleneck else f"rf={self.reduction_factor:g}"
        return f"HyperFormer++ {size} t={self.task_dim}"

    def sized_for(self, n_tasks: int) -> "HyperFormerConfig":
        """This config for a run of ``n_tasks`` tasks (``tasks: null`` becomes ``n_tasks``)."""
        if self.tasks is None:
            return dataclasses.replace(self, tasks=n_tasks)
        if self.tasks < n_tasks:
            raise FieldError("tasks", f"tasks is {self.tasks} but the run trains {n_tasks} tasks (data.task); "
                                      f"set tasks: {n_tasks} or null")
        return self

    def apply(self, model: nn.Module, family) -> list[nn.Module]:
        if self.tasks is None:
            raise ModelError("hyperformer: tasks is null; give the number of tasks (a run sets it from data.task)")
        if hasattr(model, ATTR):
            raise ModelError("hyperformer: this model already has a HyperFormer hypernetwork")
        d = getattr(model.config, family.hidden_size)
        m = self.bottleneck or max(1, int(d // self.reduction_factor))
        device = next(model.parameters()).device
        sites = placements(model, family, self.name, self.sublayers, self.stacks, self.layers, self.drop_lowest)
        nets: dict[str, int] = {}  # hypernetwork -> its layers; layer ids count the adapted blocks bottom up
        layer_of = {}
        for stack, i, _ in sites:
            key = stack if self.hypernetworks == "stack" else "model"
            layer_of[stack, i] = (key, nets.get(key, 0))
            nets[key] = nets.get(key, 0) + 1
        norms = []
        if self.train_norms:
            norms = [n for _, _, b in family.blocks(model) for _, n in family.block_norms(b)]
            norms += [model.get_submodule(p) for p in family.final_norms]
        net = HyperNetwork(self, d, m, nets, norms, device)
        adapters = place(model, family, self.name, self.sublayers,
                         lambda stack, i, kind, norm: HyperAdapter(net, *layer_of[stack, i], self.sublayers.index(kind)),
                         self.stacks, self.layers, self.drop_lowest)
        model.add_module(ATTR, net)
        model.register_forward_pre_hook(net.take_task_ids, with_kwargs=True)
        model.register_forward_hook(net.leave, with_kwargs=True, always_call=True)
        for path in family.stacks.values():
            model.get_submodule(path.rpartition(".")[0]).register_forward_pre_hook(net.direct_call)
        return [net, *adapters]

    def task_params(self, model: nn.Module) -> list[int]:
        """Trainable parameters that belong to each task (its embedding z_τ); the rest is shared."""
        return [p.numel() for p in getattr(model, ATTR).task_embeddings]


def hypernetwork(model: nn.Module) -> HyperNetwork:
    net = getattr(model, ATTR, None)
    if not isinstance(net, HyperNetwork):
        raise ModelError("hyperformer: this model has no HyperFormer hypernetwork (apply the method first)")
    return net


def add_task(model: nn.Module, *, train_only_new: bool = True) -> int:
    """Give a HyperFormer model one more task: a new embedding z_τ (N(0, 1), like the others); returns
    its task id. ``train_only_new`` freezes every other parameter, so training (with that id in
    ``task_ids``) fits the new task while the hypernetwork and the other tasks stay exactly as they
    are. The model's ``PeftState`` records the new size, so ``save_adapter`` writes every task."""
    from peftlab.methods.state import peft_state

    net, state = hypernetwork(model), peft_state(model)
    ref = net.task_embeddings[0]
    net.task_embeddings.append(nn.Parameter(torch.randn(ref.shape, device=ref.device, dtype=ref.dtype)))
    net._cache.clear()
    i = next(k for k, c in enumerate(state.configs) if isinstance(c, HyperFormerConfig))
    key = list(state.param_names)[i]
    state.configs[i] = dataclasses.replace(state.configs[i], tasks=net.tasks)
    state.param_names[key].append(f"{ATTR}.task_embeddings.{net.tasks - 1}")
    state.total_params += ref.numel()
    if train_only_new:
        for p in model.parameters():
            p.requires_grad_(False)
    net.task_embeddings[-1].requires_grad_(True)
    return net.tasks - 1
