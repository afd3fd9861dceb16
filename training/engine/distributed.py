"""Process-group set-up shared by every backend: rank, world size and device, from torchrun's environment."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


def free_port() -> int:
    """A free port for the rendezvous store, drawn below the kernel's ephemeral range. A port from bind(0) is
    ephemeral: between this check and the store binding it, any outgoing connection on the machine (another run's
    gloo pairs, an HTTP client) can take it, and a rank then talks to the wrong peer: the likely cause of a rank
    aborting (SIGABRT) once in CI while another two-rank run was going on the same machine."""
    import random

    port_range = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(port_range.read_text().split()[0]) if port_range.exists() else 32768
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # everything below the range taken: an ephemeral one rather than none
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; expected auto, cpu or cuda")
    return name


def native_bf16(device: str) -> bool:
    """Whether the device computes bf16 in hardware (a CPU with AVX-512 BF16 or AMX, a GPU from Ampere on); where
    it does not, bf16 autocast is emulated and slower than fp32."""
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes (private API)
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_precision(name: str, device: str, task_choice: str) -> str:
    """--precision auto: the task's choice (its PRECISION) where the device computes it natively, else fp32."""
    if name != "auto":
        return name
    return task_choice if task_choice != "bf16" or native_bf16(device) else "fp32"


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def init(cls, device: str) -> DistContext:
        """Join the process group torchrun described, or form a group of one when run directly.

        Every backend (Colossal-AI and FairScale included) needs a process group even for one process.
        """
        if "RANK" not in os.environ:
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=str(free_port()))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "cuda":
            torch.cuda.set_device(local_rank)
            target = torch.device("cuda", local_rank)
        else:
            target = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, target)

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
