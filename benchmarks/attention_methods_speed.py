"""Step time of the attention-hook methods against HF peft's versions, on mini-llama.

    python benchmarks/attention_methods_speed.py [--batch 8] [--seq 256] [--repeats 7] [--threads 1]
                                                 [--device cpu|cuda] [--only prefix]

For each pair it times a training step (forward + backward) and a greedy ``generate`` of 32 tokens
with the KV cache, interleaving the two implementations and reporting medians:

* stock transformers vs the peftlab attention hook with nothing attached (the fast path);
* peft prefix tuning (P=20, with and without prefix_projection) vs peftlab ``prefix``;
* peft adaption prompt (K=10, top 6 layers) vs peftlab ``llama_adapter``.

Both sides get the same weights. Timings on a shared machine are noisy: compare medians of
several runs, on one machine, in one invocation. On a CPU the figures are process CPU time.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parent.parent


def base_model(device):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(ROOT / "models" / "mini-llama")
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device).eval()  # weights do not matter for timing


def pairs(device):
    from peft import AdaptionPromptConfig, PrefixTuningConfig, get_peft_model

    from peftlab.methods import apply_methods
    from peftlab.methods.hooks.attention import use_attention_hook
    from peftlab.methods.llama_adapter import LlamaAdapterConfig
    from peftlab.methods.prefix import PrefixConfig

    stock = base_model(device)
    stock.requires_grad_(False)
    stock.lm_head.weight.requires_grad_(True)  # something to backpropagate into
    hooked = copy.deepcopy(stock)
    use_attention_hook(hooked)
    yield "no method: stock vs hook", stock, hooked

    for projection in (0, 256):
        theirs = get_peft_model(base_model(device), PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=20, prefix_projection=bool(projection),
            encoder_hidden_size=projection or None))
        ours = base_model(device)
        apply_methods(ours, [PrefixConfig(length=20, projection=projection)])
        yield f"prefix P=20{' mlp' if projection else ''}: peft vs peftlab", theirs, ours

    n = stock.config.num_hidden_layers
    theirs = get_peft_model(base_model(device), AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=10,
                                                                     adapter_layers=n - 2))
    ours = base_model(device)
    apply_methods(ours, [LlamaAdapterConfig(length=10, layers=n - 2)])
    with torch.no_grad():  # non-zero gates, so neither side can skip work
        for p in theirs.parameters():
            if p.requires_grad and p.numel() == 1:
                p.fill_(0.1)
        for name, p in ours.named_parameters():
            if name.endswith(".gate"):
                p.fill_(0.1)
    yield "llama_adapter K=10: peft vs peftlab", theirs, ours


def timed(fn, device) -> float:
    """Wall time on a GPU; on a CPU, this process's CPU time, which other processes sharing the
    machine inflate far less than wall time (use --threads 1 for the steadiest figures)."""
    clock = time.perf_counter if device == "cuda" else time.process_time
    if device == "cuda":
        torch.cuda.synchronize()
    start = clock()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return clock() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--only", default="", help="run only the pairs whose label contains this")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 8000, (args.batch, args.seq), generator=g).to(args.device)
    prompt = ids[:, :32]
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"batch {args.batch} x {args.seq} tokens, generate {args.new_tokens} tokens from 32")

    def step(model):
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)

    def generate(model):
        model.eval()
        with torch.no_grad():
            model.generate(input_ids=prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                           do_sample=False, pad_token_id=0)

    for label, a, b in pairs(args.device):
        if args.only not in label:
            continue
        for what, fn in (("train step", step), ("generate", generate)):
            fn(a), fn(b)  # warm-up
            ta, tb = [], []
            for _ in range(args.repeats):
                ta.append(timed(lambda: fn(a), args.device))
                tb.append(timed(lambda: fn(b), args.device))
            ma, mb = statistics.median(ta), statistics.median(tb)
            print(f"{label:38} {what:10}  {ma * 1e3:8.1f} ms  vs  {mb * 1e3:8.1f} ms  (ratio {mb / ma:.2f})", flush=True)


if __name__ == "__main__":
    main()
