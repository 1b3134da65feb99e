"""One process per run folder: a second one is refused at once, a killed holder leaves no stale lock,
and trainers without distributed support refuse a torchrun launch."""

import os
import signal
import time

import pytest

from col775.core.runs import RunDir, RunFolderError
from col775.mathqa.train import MathqaConfig, train_model
from col775.resnet.config import ResnetConfig
from col775.resnet.train import train
from col775.slots.config import SlotsConfig
from col775.slots.train import train as train_slots
from col775.slots.train_vae import train_vae
from tests.core.tiny_resnet import train_args, wait_for


def hold(launcher, folder):
    """Another process that opens `folder` as a RunDir and keeps it open (until killed, or 120 s)."""
    code = f"import time\nfrom col775.core.runs import RunDir\nrun = RunDir({str(folder)!r}, {{}})\nprint('holding', flush=True)\n"
    pid = launcher.start_python(code + "time.sleep(120)", folder.parent / "holder.out", folder.parent / "holder.err")
    wait_for(folder.parent / "holder.out", "holding")
    return pid


@pytest.fixture
def holder(tmp_path, launcher):
    pid = hold(launcher, tmp_path / "run")
    yield pid
    os.kill(pid, signal.SIGKILL)
    launcher.wait(pid)


@pytest.fixture(scope="module")
def held(tmp_path_factory, launcher):
    """A folder another process holds, shared by the tests that only need to be refused."""
    folder = tmp_path_factory.mktemp("held") / "run"
    pid = hold(launcher, folder)
    yield folder, pid
    os.kill(pid, signal.SIGKILL)
    launcher.wait(pid)


def test_a_second_process_is_refused_at_once_naming_the_holder_and_a_killed_holder_frees_the_folder(
    tmp_path, launcher, resnet_cache
):
    pid = hold(launcher, tmp_path / "run")
    began = time.monotonic()
    code = launcher.run(train_args(resnet_cache, tmp_path / "run", epochs=1), tmp_path / "out", tmp_path / "err")
    assert time.monotonic() - began < 30  # it gave up at once, not after the holder's two minutes
    assert code == 2
    lines = (tmp_path / "err").read_text().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("col775: error: ") and str(tmp_path / "run") in lines[0]
    assert f"PID {pid}" in lines[0]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()

    os.kill(pid, signal.SIGKILL)
    launcher.wait(pid)
    RunDir(tmp_path / "run", {}).close()  # this process (a new one) takes the folder over


@pytest.mark.parametrize(
    "trainer, config",
    [
        (train, ResnetConfig(device="cpu")),
        (train_model, MathqaConfig(device="cpu")),
        (train_slots, SlotsConfig(device="cpu")),
        (train_vae, SlotsConfig(device="cpu", decoder="diffusion")),
        (train_slots, SlotsConfig(device="cpu", decoder="diffusion")),
    ],
    ids=["resnet", "mathqa", "slots", "slots-vae", "slots-diffusion"],
)
def test_every_trainer_goes_through_the_lock(held, trainer, config):
    folder, pid = held
    with pytest.raises(RunFolderError, match=f"PID {pid}"):
        trainer(config, folder)


def test_one_process_may_open_its_own_folder_twice_and_keeps_it_until_the_last_close(tmp_path, launcher):
    first = RunDir(tmp_path / "run", {})
    second = RunDir(tmp_path / "run", {})  # e.g. a study loading the best model of a run it trained
    first.close()
    probe = f"from col775.core.runs import RunDir\nRunDir({str(tmp_path / 'run')!r}, {{}})"
    assert launcher.run_python(probe, tmp_path / "out", tmp_path / "err") == 1
    assert f"PID {os.getpid()}" in (tmp_path / "err").read_text()
    second.close()
    assert launcher.run_python(probe, tmp_path / "out", tmp_path / "err") == 0


@pytest.mark.parametrize(
    "trainer, config, name",
    [
        (train_vae, SlotsConfig(device="cpu", decoder="diffusion"), "slots train-vae"),
        # it would train its VQ-VAE first
        (train_slots, SlotsConfig(device="cpu", decoder="diffusion"), "slots train --decoder diffusion without --vae"),
    ],
)
def test_trainers_without_ddp_refuse_a_world_size_above_one(tmp_path, monkeypatch, trainer, config, name):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=f"{name} trains in one process only, but WORLD_SIZE is 2"):
        trainer(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before it wrote anything


def test_the_slots_study_refuses_torchrun_and_says_what_to_launch_instead(tmp_path, monkeypatch, capsys):
    from col775.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["slots", "study", "--preset", "demo", "--out", str(tmp_path / "study")]) == 2
    err = capsys.readouterr().err
    assert "col775 slots study trains in one process only" in err and "--plan" in err
    assert not (tmp_path / "study").exists()
