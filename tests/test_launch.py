"""`ftvs.launch`: the `accelerate launch` command line for one or several processes."""

import sys

import pytest

from ftvs.launch import launch_command


def test_launch_command_for_one_and_several_processes():
    one = launch_command(["evaluate", "RUN"], 1)
    assert one[:3] == [sys.executable, "-m", "accelerate.commands.launch"] and "--cpu" in one
    assert one[-4:] == ["-m", "ftvs", "evaluate", "RUN"] and "--multi_gpu" not in one
    two = launch_command(["train", "scratch", "--data", "D"], 2, mixed_precision="no")
    assert two[:2] == ["env", "ACCELERATE_USE_CPU=true"]  # reaches every worker: gloo on the CPU
    assert "--multi_gpu" in two and two[two.index("--num_processes") + 1] == "2"
    assert two[two.index("--main_process_port") + 1] == "0"  # a free port: jobs can run side by side
    gpu = launch_command(["train", "finetune"], 4, mixed_precision="bf16", cpu=False)
    assert gpu[0] == sys.executable and gpu[gpu.index("--mixed_precision") + 1] == "bf16"
    with pytest.raises(ValueError):
        launch_command([], 0)
    with pytest.raises(ValueError):
        launch_command([], 2, mixed_precision="fp32")
