"""PyTorch's CUDA caching allocator, modelled in pure Python (no torch): `model` (the allocator, rule by rule from
c10/cuda/CUDACachingAllocator.cpp), `blocks` (its sizes, blocks, pools and counters) and `replay` (an allocation
sequence through it: the peaks, and the least memory on which it runs).

Both sides replay through it: the harness (`vramplan.measure`) the sequence a traced step recorded, the estimator
(`vramplan.estimator.alloc_events`) the sequence its walk emits.
"""
