"""Analyses of trained runs that the seed papers describe (``peftlab analyze ...``).

* ``subspace``: the Grassmann subspace similarity between the LoRA updates of two runs (Hu et al.
  2021, §7.2; seed 001): ``peftlab analyze lora-subspace RUN_A RUN_B --out DIR``.
* ``layers``: per-layer adapter importance (Rücklé et al. 2021, AdapterDrop: lower-layer adapters
  matter less): ``peftlab analyze layer-importance RUN --out DIR``.
"""
