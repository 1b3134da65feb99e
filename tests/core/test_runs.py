import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from col775.core.runs import ConfigMismatchError, RunDir, read_run


def _objects():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    return {"model": model, "optimizer": optimizer, "scheduler": scheduler}


def _train_epoch(objects):
    model, optimizer, scheduler = objects["model"], objects["optimizer"], objects["scheduler"]
    x = torch.randn(8, 3)
    loss = model(x).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    return float(loss.detach())


def test_resume_restores_everything_and_matches_an_uninterrupted_run(tmp_path):
    config = {"lr": 0.1}
    straight = _objects()
    losses_straight = [_train_epoch(straight) for _ in range(4)]

    first = _objects()
    run = RunDir(tmp_path / "run", config)
    for epoch in range(2):
        loss = _train_epoch(first)
        run.log_epoch({"epoch": epoch, "train/loss": loss})
        run.save_checkpoint(epoch, first)
    run.close()

    resumed = _objects()
    for p in resumed["model"].parameters():
        torch.nn.init.zeros_(p)
    torch.manual_seed(123)  # whatever the RNG holds now, resume restores the checkpoint's stream
    run = RunDir(tmp_path / "run", config)
    start, _ = run.resume(resumed)
    assert start == 2
    losses = [r["train/loss"] for r in run.history()] + [_train_epoch(resumed) for _ in range(2)]
    # RNG state is restored from the checkpoint, so the data stream continues exactly.
    assert losses == pytest.approx(losses_straight, rel=1e-6)
    assert resumed["scheduler"].state_dict()["last_epoch"] == 4


def test_resume_drops_history_past_the_checkpoint(tmp_path):
    run = RunDir(tmp_path / "r", {})
    objects = _objects()
    run.save_checkpoint(0, objects)
    run.log_epoch({"epoch": 0, "x": 1.0})
    run.log_epoch({"epoch": 1, "x": 2.0})  # logged, but the run died before its checkpoint
    start, _ = RunDir(tmp_path / "r", {}).resume(_objects())
    assert start == 1
    assert [r["epoch"] for r in RunDir(tmp_path / "r", {}).history()] == [0]


def test_changed_settings_are_refused_and_force_starts_over(tmp_path):
    run = RunDir(tmp_path / "r", {"lr": 0.1})
    run.save_checkpoint(0, _objects())
    with pytest.raises(ConfigMismatchError, match="lr"):
        RunDir(tmp_path / "r", {"lr": 0.2})
    fresh = RunDir(tmp_path / "r", {"lr": 0.2}, force=True)
    assert fresh.resume(_objects())[0] == 0


def test_finish_marks_the_run_and_best_checkpoint_loads(tmp_path):
    run = RunDir(tmp_path / "r", {"a": 1})
    objects = _objects()
    run.save_checkpoint(0, objects, best=True, extra={"val": 0.5})
    weight = objects["model"].weight.detach().clone()
    _train_epoch(objects)
    run.save_checkpoint(1, objects)
    run.finish({"val": {"accuracy": 0.5}})
    again = RunDir(tmp_path / "r", {"a": 1})
    assert again.finished and again.final_metrics() == {"val": {"accuracy": 0.5}}
    loaded = _objects()
    extra = again.load_best(loaded)
    assert extra["val"] == 0.5 and extra["epoch"] == 0
    assert torch.equal(loaded["model"].weight, weight)
    assert read_run(tmp_path / "r")["metrics"] == {"val": {"accuracy": 0.5}}


def test_nonzero_rank_writes_nothing(tmp_path):
    run = RunDir(tmp_path / "r", {"a": 1}, rank=1)
    run.log_epoch({"epoch": 0, "x": 1.0})
    run.save_checkpoint(0, _objects())
    run.finish({})
    assert not (tmp_path / "r").exists()


def test_sigkill_mid_epoch_loses_at_most_that_epoch(tmp_path):
    """A process killed with SIGKILL while saving/training resumes from its last complete checkpoint."""
    script = tmp_path / "loop.py"
    script.write_text(textwrap.dedent(
        f"""
        import sys, time, torch
        from col775.core.runs import RunDir
        model = torch.nn.Linear(64, 64)
        run = RunDir({str(tmp_path / 'run')!r}, {{"k": 1}})
        start, _ = run.resume({{"model": model}})
        for epoch in range(start, 1000):
            time.sleep(0.05)  # "training"
            run.log_epoch({{"epoch": epoch}})
            run.save_checkpoint(epoch, {{"model": model}})
            print(epoch, flush=True)
        """
    ))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    seen = []
    deadline = time.time() + 60
    while len(seen) < 5 and time.time() < deadline:
        seen.append(int(proc.stdout.readline()))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run = RunDir(tmp_path / "run", {"k": 1})
    start, _ = run.resume({"model": torch.nn.Linear(64, 64)})
    assert start >= seen[-1] + 1  # every epoch reported as saved survived; only the one in flight is lost
    assert [r["epoch"] for r in run.history()] == list(range(start))


def test_a_setting_added_since_the_run_started_does_not_block_resuming(tmp_path):
    RunDir(tmp_path / "r", {"lr": 0.1}).save_checkpoint(0, _objects())
    run = RunDir(tmp_path / "r", {"lr": 0.1, "new_option": 3})
    assert run.resume(_objects())[0] == 1
