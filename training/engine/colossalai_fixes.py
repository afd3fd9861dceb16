"""Colossal-AI 0.5.0 defects that bite on every device (the CPU-only ones are in colossalai_cpu_compat).
`apply()` is idempotent; each patch covers exactly one upstream defect."""

from __future__ import annotations

import torch

_APPLIED = False


def apply() -> None:
    global _APPLIED
    if _APPLIED:
        return
    from colossalai.shardformer.layer import parallel_module
    from colossalai.tensor.padded_tensor import api

    unpad = api.to_unpadded_tensor

    # A vocabulary padded to a multiple of 64 (PaddingEmbedding, PaddingLMHead: GPT-2's 50,257 tokens) is cut back
    # in state_dict() by to_unpadded_tensor, which restores the detach/clone methods it replaced. Without tensor
    # parallelism the tensor it gets is a detached copy that carries the padding marks but not those methods, and
    # the restore raises AttributeError: a copy needs only the slice.
    def to_unpadded_tensor(tensor: torch.Tensor) -> torch.Tensor:
        if api.is_padded_tensor(tensor) and not hasattr(tensor, "_unpad_detach"):
            cut = [slice(None)] * tensor.dim()
            cut[tensor._padding_dim] = slice(None, tensor._origin_length)
            return tensor.data[tuple(cut)]
        return unpad(tensor)

    api.to_unpadded_tensor = to_unpadded_tensor
    parallel_module.to_unpadded_tensor = to_unpadded_tensor
    _APPLIED = True
