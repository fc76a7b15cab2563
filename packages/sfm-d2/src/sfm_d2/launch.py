"""``launch``: detectron2's multi-process training, also on CPU-only machines (gloo).

detectron2's own ``launch`` hard-codes NCCL and asserts CUDA, and its ``create_ddp_model`` gives
DDP ``device_ids=[local_rank]``, which DDP refuses for CPU modules. On CUDA this module simply
calls detectron2's ``launch``; on CPU it spawns the workers itself with the gloo backend, sets up
detectron2's local process group, lets DDP wrap CPU models, and gives each worker an equal share
of the cores (``OMP_NUM_THREADS``, unless the user set it): oversubscribed OpenMP threads made a
2-process CPU run 4x slower in the measured recipe.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import detectron2.engine as d2_engine
import torch
import torch.distributed as dist
from detectron2.engine import defaults as d2_defaults
from detectron2.engine import launch as detectron2_launch
from detectron2.utils import comm
from torch.multiprocessing.spawn import start_processes

from sfm_d2 import compat

DEFAULT_TIMEOUT = timedelta(minutes=30)
DEVICES = ("auto", "cpu", "cuda")


def threads_per_worker(num_workers: int, cores: int | None = None) -> int:
    """Intra-op threads per worker: ``OMP_NUM_THREADS`` if set, else ``max(1, cores // workers)``."""
    if num_workers < 1:
        raise ValueError(f"num_workers must be a positive int, got {num_workers!r}")
    preset = os.environ.get("OMP_NUM_THREADS")
    if preset:
        try:
            threads = int(preset)
        except ValueError:
            threads = 0
        if threads < 1:
            raise ValueError(f"OMP_NUM_THREADS must be a positive int, got {preset!r}")
        return threads
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // num_workers)


def free_local_url() -> str:
    """A ``tcp://127.0.0.1:PORT`` init URL on a port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def launch(
    main_func: Callable[..., Any],
    num_workers_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
    device: str = "auto",
) -> None:
    """Run ``main_func(*args)`` in ``num_workers_per_machine`` processes on each machine.

    Same arguments as ``detectron2.engine.launch`` (``dist_url="auto"`` picks a free local port
    on a single machine), plus ``device``: ``"cuda"`` uses detectron2's NCCL launcher, ``"cpu"``
    runs gloo workers, ``"auto"`` picks CUDA when it is available. ``main_func`` must be
    picklable (a module-level function), as for detectron2.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {list(DEVICES)}, got {device!r}")
    for name, value in (
        ("num_workers_per_machine", num_workers_per_machine),
        ("num_machines", num_machines),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not 0 <= machine_rank < num_machines:
        raise ValueError(f"machine_rank must be in [0, {num_machines}), got {machine_rank!r}")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        detectron2_launch(
            main_func,
            num_workers_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=tuple(args),
            timeout=timeout,
        )
        return
    world_size = num_machines * num_workers_per_machine
    if world_size == 1:
        main_func(*args)
        return
    if dist_url is None or dist_url == "auto":
        if num_machines > 1:
            raise ValueError(
                "dist_url must name the main machine (tcp://HOST:PORT) for several machines"
            )
        dist_url = free_local_url()
    threads = threads_per_worker(num_workers_per_machine)
    preset = "OMP_NUM_THREADS" in os.environ
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # inherited by the workers from birth
    try:
        start_processes(
            _cpu_worker,
            nprocs=num_workers_per_machine,
            args=(
                main_func,
                world_size,
                num_workers_per_machine,
                machine_rank,
                dist_url,
                tuple(args),
                timeout,
                threads,
            ),
            daemon=False,
            start_method="spawn",
        )
    finally:
        if not preset:
            del os.environ["OMP_NUM_THREADS"]


def _cpu_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_workers_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple[Any, ...],
    timeout: timedelta,
    threads: int,
) -> None:
    compat.apply()  # already done by importing sfm_d2 here; explicit, and idempotent
    torch.set_num_threads(threads)
    dist.init_process_group(
        backend="gloo",
        init_method=dist_url,
        world_size=world_size,
        rank=machine_rank * num_workers_per_machine + local_rank,
        timeout=timeout,
    )
    try:
        _set_local_process_group(num_workers_per_machine, machine_rank)
        _let_ddp_wrap_cpu_models()
        comm.synchronize()
        main_func(*args)
    finally:
        dist.destroy_process_group()


def _set_local_process_group(num_workers_per_machine: int, machine_rank: int) -> None:
    """detectron2's per-machine group (``comm.get_local_rank``): 0.6 sets a global, later has a helper."""
    if hasattr(comm, "create_local_process_group"):
        comm.create_local_process_group(num_workers_per_machine)
        return
    num_machines = dist.get_world_size() // num_workers_per_machine
    for machine in range(num_machines):  # every rank must create every group
        start = machine * num_workers_per_machine
        group = dist.new_group(list(range(start, start + num_workers_per_machine)))
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def _let_ddp_wrap_cpu_models() -> None:
    """Make detectron2's ``create_ddp_model`` pass ``device_ids=None`` for CPU models."""
    original = d2_defaults.create_ddp_model
    if getattr(original, "_sfm_cpu_aware", False):
        return

    def create_ddp_model(model: torch.nn.Module, **kwargs: Any) -> torch.nn.Module:
        if all(p.device.type == "cpu" for p in model.parameters()):
            kwargs.setdefault("device_ids", None)
        return original(model, **kwargs)  # type: ignore[no-any-return]

    create_ddp_model._sfm_cpu_aware = True  # type: ignore[attr-defined]
    d2_defaults.create_ddp_model = create_ddp_model
    d2_engine.create_ddp_model = create_ddp_model
