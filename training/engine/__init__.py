"""The distributed engine: one Backend interface (torch, colossalai, fairscale adapters) and one training loop."""
