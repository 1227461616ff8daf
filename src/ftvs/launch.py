"""The command line that runs `python -m ftvs ARGS` on N processes through `accelerate launch`.

Used by `ftvs study` (its `launcher` setting) and by the multi-process tests. One process is a plain
`accelerate launch` (no process group). Several processes on one machine go through the
torchrun-based launcher (`--multi_gpu`): on a machine without CUDA, or with `cpu=True`, every process
runs on the CPU and they talk over gloo (`accelerate launch --cpu --num_processes N` does not do this:
without an MPI host file it starts ONE process). `--main_process_port 0` picks a free port, so several
jobs can run side by side on one machine.

Multi-node launches and FSDP need an accelerate config file instead; see docs/multi_gpu.md.
Inside each launched process, `make_accelerator` builds the Accelerator that the training loop runs on.
"""

import os
import sys

MIXED_PRECISION = ("no", "bf16", "fp16")


def launch_command(
    args: list[str], num_processes: int, mixed_precision: str = "no", cpu: bool = True
) -> list[str]:
    """`accelerate launch` command line (a list for `subprocess.run`) for `python -m ftvs <args>` on
    `num_processes` processes of this machine; `cpu=True` forces CPU processes (gloo) even where CUDA
    exists."""
    if int(num_processes) < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(
            f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {mixed_precision!r}"
        )
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if num_processes == 1:
        cmd += ["--cpu"] if cpu else []
    else:
        # the env prefix reaches every worker: accelerate then builds a gloo process group on the CPU
        cmd = (["env", "ACCELERATE_USE_CPU=true"] if cpu else []) + cmd
        cmd += ["--multi_gpu", "--main_process_port", "0"]
    cmd += [
        "--num_processes",
        str(int(num_processes)),
        "--num_machines",
        "1",
        "--mixed_precision",
        mixed_precision,
        "--dynamo_backend",
        "no",
        "-m",
        "ftvs",
        *[str(a) for a in args],
    ]
    return cmd


def force_cpu() -> bool:
    """True for a worker of a multi-process launch on a machine without CUDA (e.g. `accelerate launch
    --multi_gpu` there): accelerate must then be told `cpu=True`, or each worker would silently train
    alone as a single-process run instead of joining a gloo process group."""
    import torch

    return _multi_process() and not torch.cuda.is_available()


def _multi_process() -> bool:
    """This process is one of a multi-process launch (`accelerate launch` / torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def training_device_type() -> str:
    """The device type the Accelerator of this process will train on (before it is built): CPU where
    CUDA is absent or the launch asked for the CPU (`accelerate launch --cpu`, ACCELERATE_USE_CPU)."""
    import torch

    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return "cuda" if torch.cuda.is_available() and not use_cpu and not force_cpu() else "cpu"


def training_precision(cfg):
    """The resolved precision (`ftvs.precision.Precision`) a run of `cfg` trains in on this process."""
    from ftvs.precision import resolve_precision

    return resolve_precision(cfg.mixed_precision, training_device_type(), cfg.arm)


def fresh_accelerate_state() -> None:
    """Accelerate keeps one state per process and refuses a second Accelerator with another precision
    ("AcceleratorState has already been initialized"): a second run in the same Python process (the
    Python API, a notebook, the tests) may well ask for one, e.g. `mixed_precision: no` after `auto`
    resolved to bf16. A single-process run therefore starts from a clean state; in a multi-process launch
    the state holds the process group and is left alone."""
    if _multi_process():
        return
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()


def make_accelerator(cfg):
    """The Accelerator of this process for a training config (a `TrainConfig`): precision (`auto` resolved
    for the arm by ftvs.precision; on the CPU Accelerate's bf16 is torch.autocast("cpu", bfloat16) around
    the forward, the weights and optimizer state stay fp32), gradient accumulation, DDP settings, and CPU
    processes where a multi-process launch has no CUDA."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

    precision = training_precision(cfg)
    fresh_accelerate_state()
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls on Ampere+: ~free speed for fp32 parts
        torch.backends.cudnn.allow_tf32 = True
    # freeze-then-unfreeze leaves the base without gradients for the first epochs: DDP must expect that
    ddp = DistributedDataParallelKwargs(
        find_unused_parameters=cfg.arm == "finetune" and cfg.method == "unfreeze"
    )
    # the train loader's batches are pinned on CUDA: copy them asynchronously (a blocking copy makes the
    # host wait for the GPU to finish the previous step before it can queue the next one)
    return Accelerator(
        mixed_precision=precision.name,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        cpu=force_cpu(),
        kwargs_handlers=[ddp],
        dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()),
    )
