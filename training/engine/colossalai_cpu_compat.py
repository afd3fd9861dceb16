"""Make Colossal-AI 0.5.0 run its ZeRO and hybrid-parallel paths on the CPU (gloo).

Colossal-AI ships a CPU accelerator, but 0.5.0 leaves most of it unimplemented and several code paths assert a
CUDA/NPU device. Every patch below covers exactly one upstream defect; `apply()` is idempotent and is only called
when a Colossal-AI run has no GPU. Nothing here changes behaviour on CUDA.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

_APPLIED = False


class _HostStream:
    """Stand-in for a device stream: on the CPU every op is already ordered, so waiting is a no-op."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, other: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def record_event(self, event: Any = None) -> Any:
        return event

    def wait_event(self, event: Any) -> None:
        pass


def apply() -> None:
    global _APPLIED
    if _APPLIED:
        return
    from colossalai.accelerator.cpu_accelerator import CpuAccelerator
    from colossalai.pipeline import p2p
    from colossalai.zero.low_level import low_level_optim

    host_stream = _HostStream()

    # CpuAccelerator.synchronize/Stream/current_stream/stream raise "not supported" (cpu_accelerator.py), yet
    # LowLevelZeroOptimizer and its BucketStore call them unconditionally to overlap communication with compute.
    CpuAccelerator.synchronize = lambda self, device=None: None
    CpuAccelerator.Stream = lambda self, device=None, priority=0, **kw: _HostStream()
    CpuAccelerator.current_stream = lambda self, device=None: host_stream
    CpuAccelerator.default_stream = lambda self, device=None: host_stream
    CpuAccelerator.stream = lambda self, stream_: contextlib.nullcontext()
    CpuAccelerator.set_stream = lambda self, stream_: None

    # CpuAccelerator seeding methods raise, but plugins seed the accelerator during configure(); the host RNG is it.
    # CpuAccelerator.get_rng_state passes `device` to torch.get_rng_state(), which takes no argument; shardformer's
    # tensor-parallel layers read it to build their seeded randomizers.
    CpuAccelerator.get_rng_state = lambda self, device=None: torch.get_rng_state()
    CpuAccelerator.manual_seed = lambda self, seed: torch.manual_seed(seed)
    CpuAccelerator.manual_seed_all = lambda self, seed: torch.manual_seed(seed)
    CpuAccelerator.device_count = lambda self: 1
    CpuAccelerator.current_device = lambda self: 0
    CpuAccelerator.set_device = lambda self, device=None: None
    CpuAccelerator.empty_cache = lambda self: None

    # LowLevelZeroOptimizer._sanity_checks asserts the accelerator is cuda/npu, although the sharding logic is
    # device-agnostic; keep its other check (uniform parameter dtype).
    def _sanity_checks(self: Any) -> None:
        for group in self.optim.param_groups:
            for param in group["params"]:
                if not getattr(param, "skip_zero_check", False) and param.dtype != self._dtype:
                    raise TypeError(f"ZeRO expects all parameters in {self._dtype}, got {param.dtype}")

    low_level_optim.LowLevelZeroOptimizer._sanity_checks = _sanity_checks

    # pipeline/p2p._check_for_nccl_hccl_backend compares the group name with c10d.Backend.HCCL, which this torch
    # does not define; on a gloo group that comparison is reached and raises AttributeError on the first send.
    def _is_nccl_or_hccl(group: Any) -> bool:
        import torch.distributed.distributed_c10d as c10d

        pg = group or c10d._get_default_group()
        while isinstance(pg, getattr(c10d, "_ProcessGroupWrapper", ())):
            pg = pg.wrapped_pg
        return pg.name() in ("nccl", "hccl")

    p2p._check_for_nccl_hccl_backend = _is_nccl_or_hccl

    # TorchDDPPlugin.configure converts every BatchNorm to SyncBatchNorm, which has no CPU kernel ("SyncBatchNorm
    # layers only work with GPU modules"): on the CPU, ranks keep their own BatchNorm statistics, as torch DDP does.
    from colossalai.booster.plugin.torch_ddp_plugin import TorchDDPPlugin

    configure = TorchDDPPlugin.configure

    def configure_without_sync_bn(self: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
        convert = torch.nn.SyncBatchNorm.convert_sync_batchnorm
        torch.nn.SyncBatchNorm.convert_sync_batchnorm = classmethod(lambda cls, module, group=None: module)
        try:
            return configure(self, model, *args, **kwargs)
        finally:
            torch.nn.SyncBatchNorm.convert_sync_batchnorm = convert

    TorchDDPPlugin.configure = configure_without_sync_bn
    # shardformer's GPT-2 forward (shardformer/modeling/gpt2.py, gpt2_model_forward) calls
    # torch.cuda.set_device(hidden_states.device) before every block, which raises for a CPU tensor; setting the
    # current CUDA device to "the CPU" means nothing, so that call is skipped.
    cuda_set_device = torch.cuda.set_device

    def set_device_unless_cpu(device: Any) -> None:
        if isinstance(device, torch.device | str) and torch.device(device).type == "cpu":
            return
        cuda_set_device(device)

    torch.cuda.set_device = set_device_unless_cpu

    # Gathering GPT-2's fused qkv weight from its tensor-parallel pieces (state_dict, hence every checkpoint) moves
    # the piece to CUDA for the all-gather (`qkv.cuda()` in qkv_fused_linear.gather_fused_qkv_in_gpt2_style); gloo
    # gathers host tensors as they are.
    from colossalai.shardformer.layer import qkv_fused_linear

    gather_qkv = qkv_fused_linear.gather_fused_qkv_in_gpt2_style

    def gather_qkv_on_host(qkv: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if qkv.device.type != "cpu":
            return gather_qkv(qkv, *args, **kwargs)
        to_cuda = torch.Tensor.cuda
        torch.Tensor.cuda = lambda self, *a, **k: self
        try:
            return gather_qkv(qkv, *args, **kwargs)
        finally:
            torch.Tensor.cuda = to_cuda

    qkv_fused_linear.gather_fused_qkv_in_gpt2_style = gather_qkv_on_host
    _APPLIED = True
