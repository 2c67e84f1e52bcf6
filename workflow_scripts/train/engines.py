"""Training engines: how the trainable module is spread over processes (``loop.distributed``).

The loop talks to one :class:`Engine` and never branches on which one it is:

- ``ddp``: accelerate's DistributedDataParallel (every process holds the whole model and optimiser).
- ``fsdp``: FSDP2, our own: ``torch.distributed.fsdp.fully_shard`` on every transformer block (the classes
  a model lists in ``_no_split_modules``), then on the root, as torchtitan does. Parameters, gradients and
  optimiser state are sharded; checkpoints are sharded ``torch.distributed.checkpoint`` folders. accelerate
  is not used here: with ``cpu=True`` it silently falls back to DDP, so FSDP could never be tested on CPU.
- ``deepspeed``: DeepSpeed ZeRO stage ``loop.zero_stage`` (2: optimiser state and gradients sharded;
  3: parameters too) through ``deepspeed.initialize`` with our AdamW and schedule as client objects.

Every engine exports the FULL weights (``export``): a collective call on every rank, after which only
the main process writes, with the model as the task built it, so ``save_pretrained`` layouts stay as
before. Resumable state (``save_state``/``load_state``) always includes the LR schedule and the RNG of
every rank, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import hashlib
import logging
import os
import random
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from workflow_scripts.train.config import LoopConfig
from workflow_scripts.train.dist import export_submitit_environment

log = logging.getLogger(__name__)

Writer = Callable[[torch.nn.Module], None]


class Engine:
    """What the loop and the checkpointer need from a distribution strategy."""

    process_index: int = 0
    num_processes: int = 1
    local_index: int = 0
    device: torch.device = torch.device("cpu")

    def __init__(self, loop: LoopConfig) -> None:
        self.loop = loop
        self.schedule: Any = None
        self.optimizer: Any = None

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0

    # --- setup ----------------------------------------------------------------------------------------
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """Place/shard ``model`` before the optimiser is built over its parameters."""
        return model

    def prepare(self, model: torch.nn.Module, optimizer, schedule) -> tuple[torch.nn.Module, Any]:
        self.optimizer, self.schedule = optimizer, schedule
        return model, optimizer

    # --- one optimiser step -----------------------------------------------------------------------------
    def micro_step(self, model: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-batch's forward+backward; gradients are synchronised on ``last`` only."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def optimizer_step(self, params: list[torch.nn.Parameter], clip: float) -> torch.Tensor:
        """Clip (``clip`` > 0), step optimiser and schedule, zero the gradients; return the global gradient
        norm before clipping. A non-finite norm skips the update (the loop then stops with an error)."""
        norm = self._clip(params, clip)
        if torch.isfinite(norm):
            self.optimizer.step()
            self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def _clip(self, params: list[torch.nn.Parameter], clip: float) -> torch.Tensor:
        raise NotImplementedError

    def last_lr(self) -> float:
        return self.schedule.get_last_lr()[0]

    # --- collectives -------------------------------------------------------------------------------------
    def reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mean over processes."""
        if self.num_processes == 1:
            return tensor
        out = tensor.detach().clone()
        dist.all_reduce(out)
        return out / self.num_processes

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.num_processes == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.num_processes)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def wait_for_everyone(self) -> None:
        if self.num_processes > 1:
            dist.barrier()

    # --- state ---------------------------------------------------------------------------------------------
    def save_state(self, folder: str) -> None:
        raise NotImplementedError

    def load_state(self, folder: str) -> None:
        raise NotImplementedError

    def export(self, model: torch.nn.Module, write: Writer, *, final: bool = False) -> None:
        """Collective: gather the full weights; the main process calls ``write(module)``. The module is
        on the CPU for checkpoints and on the training device for the ``final`` export (after which a
        stage may still use it on the main process, e.g. to draw previews)."""
        raise NotImplementedError

    def end(self) -> None:
        pass

    # shared by the engines that keep their own resumable state next to the sharded weights
    def _save_schedule_and_rng(self, folder: Path) -> None:
        if self.is_main_process:
            torch.save(self.schedule.state_dict(), folder / "schedule.pt")
        torch.save(_rng_state(), folder / f"rng_{self.process_index}.pt")

    def _load_schedule_and_rng(self, folder: Path) -> None:
        self.schedule.load_state_dict(torch.load(folder / "schedule.pt", weights_only=False))
        rng = folder / f"rng_{self.process_index}.pt"
        if not rng.exists():
            raise RuntimeError(
                f"{folder} has no RNG state for rank {self.process_index}: it was written by fewer "
                "processes. Resume with the launcher's tasks/nodes the checkpoint was written with."
            )
        _set_rng_state(torch.load(rng, weights_only=False))


def make_engine(loop: LoopConfig) -> Engine:
    if loop.distributed == "ddp":
        return AccelerateEngine(loop)
    if loop.distributed == "fsdp":
        return FSDPEngine(loop)
    if loop.distributed == "deepspeed":
        return DeepSpeedEngine(loop)
    raise ValueError(f"loop.distributed = {loop.distributed!r}; choose ddp, fsdp or deepspeed")


# --- ddp: accelerate --------------------------------------------------------------------------------------
class AccelerateEngine(Engine):
    def __init__(self, loop: LoopConfig) -> None:
        from accelerate import Accelerator

        super().__init__(loop)
        export_submitit_environment()
        on_gpu = torch.cuda.is_available()
        self.acc = Accelerator(
            cpu=not on_gpu,
            mixed_precision=loop.mixed_precision if on_gpu else "no",
            step_scheduler_with_optimizer=False,
        )
        self.process_index = self.acc.process_index
        self.num_processes = self.acc.num_processes
        self.local_index = self.acc.local_process_index
        self.device = self.acc.device
        if self.is_main_process:
            log.info(
                "engine ddp (accelerate %s): %d process(es), device %s, mixed precision %s",
                self.acc.distributed_type,
                self.num_processes,
                self.device,
                self.acc.mixed_precision,
            )

    def prepare(self, model, optimizer, schedule):
        model, optimizer = self.acc.prepare(model, optimizer)
        self.acc.register_for_checkpointing(schedule)
        self.acc.register_save_state_pre_hook(_drop_frozen_parameters)
        self.model = model
        return super().prepare(model, optimizer, schedule)

    def micro_step(self, model, last):
        return contextlib.nullcontext() if last else self.acc.no_sync(model)

    def backward(self, loss):
        self.acc.backward(loss)

    def _clip(self, params, clip):
        if clip > 0:
            return torch.as_tensor(self.acc.clip_grad_norm_(params, clip), device=self.device).float()
        return _local_norm(params, self.device)

    def reduce(self, tensor):
        return self.acc.reduce(tensor, reduction="mean")

    def gather(self, tensor):
        return self.acc.gather(tensor)

    def wait_for_everyone(self):
        self.acc.wait_for_everyone()

    def save_state(self, folder):
        self.acc.save_state(folder)

    def load_state(self, folder):
        # frozen parameters are not in the checkpoint (_drop_frozen_parameters): they stay as the stage's
        # inputs loaded them; every trained one must be there
        self.acc.load_state(folder, strict=False)
        _require_trained_parameters(Path(folder), self.acc._models)

    def export(self, model, write, *, final=False):
        if self.is_main_process:
            write(self.acc.unwrap_model(model))

    def end(self):
        # no trackers to finish; end_training would also destroy the process group, which a second
        # training run in the same process (accelerate's state is a singleton) could not re-create
        self.acc.wait_for_everyone()


def _aliases(model: torch.nn.Module) -> dict[int, list[str]]:
    """Every name of each parameter tensor (tied weights have several)."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return names


def _drop_frozen_parameters(models, weights, output_dir) -> None:
    """accelerate's save-state hook: a checkpoint keeps what training changes. Frozen parameters (a LoRA
    stage's whole base model: 23 GB for an RL stage at the paper preset) are the stage's inputs, loaded
    again on resume; kept, every checkpoint would hold another copy of them. Buffers stay (an EMA's)."""
    for model, state in zip(models, weights, strict=True):
        frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
        for name in frozen & set(state):
            del state[name]


def _require_trained_parameters(folder: Path, models) -> None:
    from safetensors import safe_open

    for i, model in enumerate(models):
        path = folder / f"model{f'_{i}' if i else ''}.safetensors"
        if not path.exists():
            continue  # a .bin checkpoint: accelerate's own loader already read it
        with safe_open(str(path), "pt") as file:
            saved = set(file.keys())
        params = dict(model.named_parameters(remove_duplicate=False))
        missing = [
            names[0]
            for names in _aliases(model).values()
            if params[names[0]].requires_grad and not saved & set(names)
        ]
        if missing:
            raise RuntimeError(
                f"{path} lacks {len(missing)} trained parameter(s) (e.g. {missing[0]}): it was not written "
                "by this stage's model. Delete the checkpoint folder to restart the stage from its inputs."
            )


# --- process groups for the engines that manage their own ----------------------------------------------
class _OwnGroup(Engine):
    """Initialises torch.distributed from the launcher's environment (or a 1-process group)."""

    def __init__(self, loop: LoopConfig, backend: str) -> None:
        super().__init__(loop)
        export_submitit_environment()
        self.own_group = False
        if not dist.is_initialized():
            if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
                # kept for the process's lifetime (like accelerate's): re-creating it on the same
                # MASTER_PORT for a second training run in one process can hang
                dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
            else:  # one process outside a launcher: still a group, so the sharded code path is the same
                dist.init_process_group(
                    backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
                )
                self.own_group = True
        self.process_index = dist.get_rank()
        self.num_processes = dist.get_world_size()
        self.local_index = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_index)
            self.device = torch.device("cuda", self.local_index)
        else:
            self.device = torch.device("cpu")

    def end(self) -> None:
        self.wait_for_everyone()
        if self.own_group and dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- fsdp: FSDP2 -------------------------------------------------------------------------------------
def shard_blocks(model: torch.nn.Module) -> list[str]:
    """Names of the modules FSDP2 shards as units: those whose class a (sub)model lists in
    ``_no_split_modules`` (transformers and diffusers models define it: decoder layers, DiT blocks)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return [name for name, module in model.named_modules() if name and type(module).__name__ in names]


class FSDPEngine(_OwnGroup):
    def __init__(self, loop: LoopConfig) -> None:
        super().__init__(loop, "nccl" if torch.cuda.is_available() else "gloo")
        self.full_copy: torch.nn.Module | None = None
        if self.is_main_process:
            log.info("engine fsdp (FSDP2): %d process(es), device %s", self.num_processes, self.device)

    def wrap(self, model):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # the export target: the unsharded module as the task built it (save_pretrained cannot run on a
        # sharded one: its state_dict returns DTensors even after unshard())
        self.full_copy = copy.deepcopy(model).cpu() if self.is_main_process else None
        # fully_shard moves each parameter's shard to the mesh's device: the whole model never has to
        # fit on one GPU
        mesh = init_device_mesh(self.device.type, (self.num_processes,))
        kwargs: dict[str, Any] = {"mesh": mesh}
        if self.device.type == "cuda" and self.loop.mixed_precision == "bf16":
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        blocks = shard_blocks(model)
        named = dict(model.named_modules())
        for name in blocks:
            if not any(name.startswith(other + ".") for other in blocks):  # outermost blocks only
                fully_shard(named[name], **kwargs)
        fully_shard(model, **kwargs)
        model.to(self.device)  # anything fully_shard does not manage (none in HF/diffusers models)
        if self.is_main_process:
            log.info("fsdp: sharded %d block(s) and the root", len(blocks))
        return model

    def micro_step(self, model, last):
        model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def _clip(self, params, clip):
        if clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        return norm.float()

    def save_state(self, folder):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(Path(folder) / "dcp"))
        self._save_schedule_and_rng(Path(folder))

    def load_state(self, folder):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        if not (Path(folder) / "dcp").is_dir():
            raise RuntimeError(
                f"{folder} is not an FSDP checkpoint (no dcp/ folder): it was written by another "
                "loop.distributed engine; move it aside or switch the engine back"
            )
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(Path(folder) / "dcp"))
        set_state_dict(
            self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )
        self._load_schedule_and_rng(Path(folder))

    def prepare(self, model, optimizer, schedule):
        self.model = model
        return super().prepare(model, optimizer, schedule)

    def export(self, model, write, *, final=False):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.is_main_process:
            _write_copy(self.full_copy, full, write, self.device if final else None)
        self.wait_for_everyone()


# --- deepspeed: ZeRO-2/3 -----------------------------------------------------------------------------
def extensions_dir(prefix: str = sys.prefix) -> str:
    """Where DeepSpeed JIT-builds its ops: one torch extension cache per Python environment.

    torch's default cache has one folder per op whatever the environment, so two checkouts' virtual
    environments (or a user's and CI's) rewrite each other's build file and rebuild the op on every job
    (DeepSpeed's CPU communication op: 0.5-3 min a job on 2 cores, seen in issue 18's smoke run).
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    tag = hashlib.sha256(os.path.realpath(prefix).encode()).hexdigest()[:12]
    return os.path.join(base, "torch_extensions", f"env-{tag}")


class DeepSpeedEngine(_OwnGroup):
    def __init__(self, loop: LoopConfig) -> None:
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", extensions_dir())  # a user's own setting wins
        super().__init__(loop, "nccl" if torch.cuda.is_available() else "gloo")
        import deepspeed

        # DeepSpeed reads LOCAL_RANK itself; a one-process run (no launcher environment) has none
        os.environ.setdefault("LOCAL_RANK", str(self.local_index))
        deepspeed.init_distributed(dist_backend=dist.get_backend(), dist_init_required=False)
        self.full_copy: torch.nn.Module | None = None
        if self.is_main_process:
            log.info(
                "engine deepspeed ZeRO-%d: %d process(es), device %s",
                loop.zero_stage,
                self.num_processes,
                self.device,
            )

    def config(self) -> dict[str, Any]:
        loop = self.loop
        bf16 = self.device.type == "cuda" and loop.mixed_precision == "bf16"
        return {
            "train_batch_size": loop.batch_size,
            "train_micro_batch_size_per_gpu": loop.micro_batch_size,
            "gradient_accumulation_steps": loop.accumulation(self.num_processes),
            "gradient_clipping": loop.optim.grad_clip,
            "zero_optimization": {"stage": loop.zero_stage},
            "bf16": {"enabled": bf16},
            "fp16": {"enabled": self.device.type == "cuda" and loop.mixed_precision == "fp16"},
            "zero_allow_untested_optimizer": True,  # our AdamW (settings from loop.optim)
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
        }

    def wrap(self, model):
        self.full_copy = copy.deepcopy(model).cpu() if self.is_main_process else None
        return model.to(self.device)

    def prepare(self, model, optimizer, schedule):
        import deepspeed

        engine, ds_optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.config(), dist_init_required=False
        )
        self.engine = engine
        self.optimizer, self.schedule = ds_optimizer, schedule
        return engine, ds_optimizer

    def micro_step(self, model, last):
        self.engine.set_gradient_accumulation_boundary(last)
        return contextlib.nullcontext()

    def backward(self, loss):
        self.engine.backward(loss, scale_wrt_gas=False)  # the loop already divides by the micro-batches

    def optimizer_step(self, params, clip):
        self.engine.step()  # clips (gradient_clipping), steps, zeroes the gradients
        self.schedule.step()
        norm = self.engine.get_global_grad_norm()
        return torch.as_tensor(float("nan") if norm is None else float(norm), device=self.device)

    def save_state(self, folder):
        self.engine.save_checkpoint(str(Path(folder) / "deepspeed"), tag="state")
        self._save_schedule_and_rng(Path(folder))

    def load_state(self, folder):
        if not (Path(folder) / "deepspeed").is_dir():
            raise RuntimeError(
                f"{folder} is not a DeepSpeed checkpoint (no deepspeed/ folder): it was written by another "
                "loop.distributed engine; move it aside or switch the engine back"
            )
        self.engine.load_checkpoint(
            str(Path(folder) / "deepspeed"), tag="state", load_lr_scheduler_states=False
        )
        self._load_schedule_and_rng(Path(folder))

    def export(self, model, write, *, final=False):
        import deepspeed
        from deepspeed.utils import safe_get_full_fp32_param

        module = self.engine.module
        gathered = (
            deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
            if self.loop.zero_stage == 3
            else contextlib.nullcontext()
        )
        with gathered:
            full = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        for name, param in module.named_parameters():
            if param.requires_grad:  # the fp32 master weights, not their bf16 working copy
                master = safe_get_full_fp32_param(param)
                if master is not None:
                    full[name] = master.detach().cpu().clone()
        if self.is_main_process:
            _write_copy(self.full_copy, full, write, self.device if final else None)
        self.wait_for_everyone()

    def end(self):
        self.engine.destroy()
        super().end()


# --- helpers -------------------------------------------------------------------------------------------
def _write_copy(
    copy_: torch.nn.Module | None, full: dict[str, torch.Tensor], write: Writer, device: torch.device | None
) -> None:
    """Load the gathered weights into the main process's unsharded copy and hand it to ``write``."""
    assert copy_ is not None, "the unsharded copy lives on the main process only"
    copy_.load_state_dict(full)
    write(copy_.to(device) if device is not None else copy_)


def _local_norm(params: list[torch.nn.Parameter], device: torch.device) -> torch.Tensor:
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.zeros((), device=device)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
