"""Beyond one machine, with the real tools in their local modes: submitit sweeps, the sbatch
script of hydra/launcher=slurm, multi-node DDP through torchrun, preemption and SLURM requeue."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from cvexp.checkpoint import load_classifier
from cvexp.data import CIFAR10DataModule
from cvexp.outside_launch import outside_launch, slurm_job_id
from tests.conftest import BIN, CLI_TINY, TINY_MODEL, run_cli, write_batches_dir

ROOT = Path(__file__).resolve().parents[1]
WITH_TESTS = {"PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

try:
    import hydra_plugins.hydra_submitit_launcher  # noqa: F401

    SUBMITIT = True
except ImportError:
    SUBMITIT = False
needs_submitit = pytest.mark.skipif(
    not SUBMITIT, reason='hydra-submitit-launcher is not installed (pip install -e ".[dev]")'
)


def fake_command(folder: Path, name: str, script: str) -> Path:
    """An executable `name` in `folder` (put first on PATH) that runs the shell `script`."""
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


def with_path(folder: Path, **extra: str) -> dict[str, str]:
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", **extra}


def single_process_test_accuracy(best_checkpoint: str, data_root: Path) -> float:
    """The best checkpoint's accuracy on the whole test set, in this one process."""
    classifier, _ = load_classifier(best_checkpoint)
    dm = CIFAR10DataModule(str(data_root), download=False, val_size=40)
    dm.setup("test")
    with torch.no_grad():
        x = dm.data.test_images.permute(0, 3, 1, 2).float() / 255
        return (classifier(x).argmax(1) == dm.data.test_labels).float().mean().item()


# The Scaling-out examples of the README are these command lines (with the tiny test settings).
SUBMITIT_SWEEP = ["-m", "hydra/launcher=submitit_local", "trainer=ddp_cpu", "seed=1,2"]
SLURM_KEYS = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=gpu",
    "hydra.launcher.timeout_min=240",
    "hydra.launcher.array_parallelism=1",
    "trainer=ddp",
    "trainer.devices=4",
    "trainer.num_nodes=2",
]


@pytest.mark.slow
@needs_submitit
def test_submitit_sweep_of_ddp_jobs_one_process_and_directory_each(tmp_path: Path, tiny) -> None:
    write_batches_dir(tmp_path / "data", tiny)
    result = run_cli("cvexp-train", *SUBMITIT_SWEEP, *CLI_TINY, "trainer.devices=2", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "multirun"]  # nothing stray
    (sweep,) = list((tmp_path / "multirun").glob("*/*"))
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [job.name for job in jobs] == ["0_seed-1", "1_seed-2"]
    for job in jobs:  # the run contract, in each job's own directory
        assert {".hydra", "checkpoints", "tensorboard", "summary.json"} <= {
            p.name for p in job.iterdir()
        }
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["run_dir"] == str(job)
        assert (job / "checkpoints" / "last.ckpt").is_file()
    # each job ran as a submitit job of its own (a process per job), and DDP ran in each
    job_logs = sorted(sweep.glob(".submitit/*/*_0_log.out"))
    assert len(job_logs) == 2 and len({log.parent.name for log in job_logs}) == 2
    for job in jobs:  # two DDP processes in each job, both in the job's own folder
        assert "MEMBER: 1/2" in (job / "train.log").read_text()
        assert (job / "train_ddp_process_1.log").is_file()
    compared = run_cli("cvexp-compare", str(sweep), cwd=tmp_path)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    with open(sweep / "results.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))  # one configuration, its two seeds
    assert row["n"] == "2" and row["status"] == "2 completed", row


@pytest.mark.slow
@needs_submitit
def test_slurm_launcher_submits_the_cluster_keys(tmp_path: Path) -> None:
    """What `hydra/launcher=slurm` would submit: submitit's sbatch script, caught by a fake sbatch."""
    bin_dir = tmp_path / "bin"
    fake_command(
        bin_dir,
        "sbatch",
        f'cp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"',
    )
    fake_command(
        bin_dir, "srun", "exit 1"
    )  # submitit checks that srun exists; nothing runs it here
    fake_command(bin_dir, "sacct", "exit 1")  # the launcher then waits for the job: stopped below
    process = subprocess.Popen(
        [str(BIN / "cvexp-train"), "-m", *SLURM_KEYS, *TINY_MODEL, "seed=1,2"],
        cwd=tmp_path,
        env={**os.environ, **with_path(bin_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    script = tmp_path / "submitted.sh"
    deadline = time.monotonic() + 120
    while not script.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.kill()
    output, _ = process.communicate(timeout=60)
    assert script.exists(), output
    lines = set(script.read_text().splitlines())
    for expected in (
        "#SBATCH --partition=gpu",
        "#SBATCH --time=240",
        "#SBATCH --nodes=2",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --ntasks-per-node=4",  # one SLURM task per GPU: Lightning reads the SLURM environment
        "#SBATCH --array=0-1%1",  # the two jobs of the sweep, one at a time
    ):
        assert expected in lines, script.read_text()
    assert any("submitit.core._submit" in line for line in lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_nodes_make_one_run(tmp_path: Path, tiny) -> None:
    write_batches_dir(tmp_path / "data", tiny)
    port = free_port()
    overrides = [
        *CLI_TINY,
        "trainer.strategy=ddp",
        "trainer.num_nodes=2",
        "trainer.limit_test_batches=null",
    ]
    nodes = [
        subprocess.Popen(
            [
                str(BIN / "torchrun"),
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={rank}",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{port}",
                str(BIN / "cvexp-train"),
                *overrides,
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(outputs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "outputs"]
    (run_dir,) = list((tmp_path / "outputs").glob("*/*"))  # one directory, no hydra.run.dir given
    launch = json.loads((run_dir / ".hydra" / "launch.json").read_text())
    assert launch["launcher"] == "torchrun" and launch["world_size"] == 2
    assert (run_dir / "train_rank1.log").is_file()  # rank 1 wrote into the same directory
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    # the two-node test (each rank half the test set) equals one process evaluating the best checkpoint
    expected = single_process_test_accuracy(summary["best_model_path"], tmp_path / "data")
    assert summary["test_acc"] == pytest.approx(expected)


@pytest.mark.slow
def test_preemption_signal_then_slurm_requeue_continues_the_run(tmp_path: Path, tiny) -> None:
    write_batches_dir(tmp_path / "data", tiny)
    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "scontrol", f'echo "$@" >> {tmp_path}/scontrol.log')
    marker = tmp_path / "paused"
    command = [
        str(BIN / "cvexp-train"),
        *CLI_TINY,
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=4",
        "callbacks.feature_maps=null",
        "+callbacks.pause._target_=tests.helpers.PauseForSignal",
        "+callbacks.pause.step=6",  # in the second epoch
        f"+callbacks.pause.marker={marker}",
    ]
    # one SLURM task, as sbatch + srun start it; Lightning detects SLURM and its auto-requeue
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "cvexp",
        "SLURM_NTASKS": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
    }
    env = {**os.environ, **WITH_TESTS, **with_path(bin_dir), **slurm}
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGUSR1)  # SLURM's notice before a preemption
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output
    (run_dir,) = list((tmp_path / "outputs").glob("*/*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_run"] == 1
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] >= 6
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    # SLURM starts the requeued job again: the same command line and job id, one more restart
    requeued = subprocess.run(
        command,
        cwd=tmp_path,
        env={**env, "SLURM_RESTART_COUNT": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert requeued.returncode == 0, requeued.stdout + requeued.stderr
    assert list((tmp_path / "outputs").glob("*/*")) == [run_dir]  # the same run, in place
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == 3
    assert summary["test_acc"] is not None
    assert f"resume='{run_dir}'" in summary["overrides"]  # continued in place, as resume= would
    assert list((run_dir / ".hydra" / "history").glob("*/overrides.yaml"))
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]  # only once


def test_the_launch_is_read_from_the_environment(monkeypatch) -> None:
    for name in [n for n in os.environ if n.startswith(("SLURM_", "TORCHELASTIC_"))]:
        monkeypatch.delenv(name)
    assert outside_launch() is None
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "70")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_PROCID", "2")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    launch = outside_launch()
    # an array task is requeued by its array name, as Lightning does
    assert (launch.launcher, launch.rank, launch.world_size) == ("slurm", 2, 4)
    assert launch.slurm_job == slurm_job_id() == "70_3" and launch.slurm_step == "batch"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "r")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert outside_launch().launcher == "torchrun" and outside_launch().rank == 1
