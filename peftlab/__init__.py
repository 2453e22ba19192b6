"""peftlab: parameter-efficient fine-tuning methods that compose, and a bench that compares them.

Heavy imports (torch, transformers) happen in the submodules, so ``import peftlab`` stays fast.
"""

__version__ = "0.1.0"
