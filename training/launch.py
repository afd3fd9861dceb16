"""Start a training run: checks, data, then 1 process in-process or N through torch's elastic launcher.

`--nproc N` runs `python -m training.launch OUT/train_config.json` in N processes with the same launcher torchrun
uses; several machines join through its rendezvous (--nnodes, --node-rank, --rdzv-endpoint).
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record

from training.config import TrainConfig
from training.engine.backends import BACKENDS, backend_class
from training.engine.backends.base import StrategyUnavailable
from training.engine.distributed import DistContext, free_port, resolve_device, resolve_precision
from training.engine.trainer import EPOCHS_DIR
from training.fingerprint import run_fingerprint
from training.processes import die_with_parent_now
from training.tasks import get_task, task_options
from training.tasks.specs import task_spec


class TrainingFailed(RuntimeError):
    pass


def resolve_data_dir(cfg: TrainConfig) -> Path:
    task = get_task(cfg.task)
    if cfg.synthetic:
        target = Path(cfg.out) / "synthetic-data"
        if not any(target.glob("*")):
            target.mkdir(parents=True, exist_ok=True)
            task.synthesize(target, seed=cfg.seed)
        return target
    if cfg.data_dir:
        return Path(cfg.data_dir)
    if cfg.task_options.get("train_file"):  # files named one by one
        return Path(cfg.task_options["train_file"]).parent
    root = os.environ.get("MODELYARD_DATA")
    subdir = task_spec(cfg.task).data_subdir
    if root and (Path(root) / subdir).is_dir():
        return Path(root) / subdir
    raise FileNotFoundError(f"no {cfg.task} data: pass --data-dir DIR, set MODELYARD_DATA to a folder holding "
                            f"{subdir}/, or use --synthetic for generated data")


def _precision(cfg: TrainConfig, device: str) -> str:
    """--precision as it will run: auto becomes the task's choice where the device computes it natively and the
    strategy can run it."""
    backend = BACKENDS.get(cfg.backend)
    fp32_only = backend is not None and cfg.strategy in backend.fp32_only
    return resolve_precision(cfg.precision, device, "fp32" if fp32_only else task_spec(cfg.task).precision)


def planned(cfg: TrainConfig) -> TrainConfig:
    """cfg as it will run: the task's options completed with their defaults, the precision resolved, the data folder
    found (generated data written where asked for), and the fingerprint of code, data and settings that the
    manifest will record."""
    cfg.task_options = task_options(cfg.task, cfg.task_options)
    cfg.precision = _precision(cfg, resolve_device(cfg.device))
    cfg.data_dir = str(resolve_data_dir(cfg).resolve())
    cfg.fingerprint = run_fingerprint(cfg.to_dict(), Path(cfg.data_dir))
    return cfg


def run_training(cfg: TrainConfig, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Train and save a checkpoint in cfg.out; raises StrategyUnavailable/TrainingFailed with a one-line reason.
    `on_epoch` sees each epoch's log record (one process only; it may raise to end the run, as a pruner does)."""
    device = resolve_device(cfg.device)
    cfg.precision = _precision(cfg, device)  # planned() does it too; the check below needs it first
    backend_class(cfg, device, task_spec(cfg.task).hf_model)  # refuse impossible combinations before any start
    if device == "cuda" and cfg.nproc > torch.cuda.device_count():
        # NCCL refuses two ranks on one GPU; say so before starting processes that would each fail.
        raise TrainingFailed(f"--nproc {cfg.nproc} needs {cfg.nproc} GPUs on this machine (one per process); "
                             f"{torch.cuda.device_count()} visible")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    planned(cfg)
    if not cfg.resume:  # a fresh run must not inherit an older run's log or resume state
        shutil.rmtree(out / "state", ignore_errors=True)
        shutil.rmtree(out / EPOCHS_DIR, ignore_errors=True)
        (out / "train_log.jsonl").unlink(missing_ok=True)
    config_path = out / "train_config.json"
    cfg.save(config_path)
    if cfg.nproc == 1 and cfg.nnodes == 1:
        worker(config_path, on_epoch)
    else:
        if on_epoch is not None:
            raise TrainingFailed("epoch callbacks (modelyard tune's pruning) run with --nproc 1 only")
        _elastic_launch(cfg, config_path)
    return out


def _elastic_launch(cfg: TrainConfig, config_path: Path) -> None:
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if cfg.nnodes > 1 and not cfg.rdzv_endpoint:
        raise TrainingFailed("--nnodes > 1 needs --rdzv-endpoint HOST:PORT reachable from every machine")
    static = cfg.node_rank is not None
    launch = LaunchConfig(
        min_nodes=cfg.nnodes, max_nodes=cfg.nnodes, nproc_per_node=cfg.nproc,
        run_id=f"modelyard-{uuid.uuid4().hex[:8]}" if cfg.nnodes == 1 else "modelyard",
        rdzv_backend="static" if static else "c10d",
        rdzv_endpoint=cfg.rdzv_endpoint or f"127.0.0.1:{free_port()}",
        rdzv_configs={"rank": cfg.node_rank} if static else {},
        max_restarts=0, monitor_interval=0.2, start_method="spawn",
    )
    # Share the cores between local ranks instead of oversubscribing them (what torchrun does too).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.nproc)))
    try:
        elastic_launch(launch, entrypoint=sys.executable)("-m", "training.launch", str(config_path))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        message = failure.message if isinstance(failure.message, str) else failure.message.get("message", "")
        reason = message.strip().splitlines()[-1] if message and message.strip() else f"exit code {failure.exitcode}"
        raise TrainingFailed(f"training failed on rank {rank}: {reason}") from None


def _die_with_launcher() -> None:
    """torch's elastic agent starts each rank in a new session, so a launcher killed with SIGKILL leaves its ranks
    training on and writing state under a resumed run. On Linux, have the kernel kill this rank with its launcher."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        die_with_parent_now()


@record
def worker(config_path: Path, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> None:
    """One training process: join the group, build the recipe's job, fit, and (rank 0) save the checkpoint."""
    from training.engine.trainer import fit

    _die_with_launcher()
    cfg = TrainConfig.load(config_path)
    device = resolve_device(cfg.device)
    ctx = DistContext.init(device)
    try:
        task = get_task(cfg.task)
        backend = backend_class(cfg, device, task_spec(cfg.task).hf_model)(cfg.strategy, ctx, cfg)
        torch.manual_seed(cfg.seed)  # before the recipe builds the model: identical weights on every rank and run
        job, data, model_config = task.build_job(cfg)
        result = fit(job, cfg, ctx, backend, on_epoch)
        if ctx.is_main:
            task.save(cfg, data, model_config, result)
        ctx.barrier()
    finally:
        ctx.close()


if __name__ == "__main__":
    try:
        worker(Path(sys.argv[1]))
    except StrategyUnavailable:
        # @record put the one-line reason in the error file the launcher reads and reports; the traceback on each
        # rank's stderr would only bury it
        sys.exit(1)
