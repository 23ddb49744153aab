"""Test-session settings."""

import torch

# The suite's tensors are small and CI has two cores: one intra-op thread avoids OpenMP
# spin contention, which made tiny tensor ops hundreds of times slower on a loaded machine.
torch.set_num_threads(1)
