"""`slots train` under torch.distributed: 2 gloo ranks of batch 4 train like 1 process of batch 8, a killed
2-rank run resumes, and the gathered scores equal a 1-process evaluation of the same checkpoint.

The ranks are forked processes set up as torchrun sets up its workers (RANK, WORLD_SIZE, MASTER_ADDR ...
in the environment), so they skip the seconds of importing torch again. Nothing in the runs is random
but the diffusion decoder's timesteps and noise, which each image draws from its own generator: slot
init is learned, there is no dropout. Evaluation batches hold one image, because CPU convolutions round
an image's numbers differently beside other images."""

import json
import os
import signal
import socket

import pytest
import torch
import torch.multiprocessing as mp

import col775.slots.train as train_module
from col775.slots.diffusion.vae import VQVAE
from col775.slots.evaluate import evaluate
from col775.slots.loaders import make_loaders
from col775.slots.train import load_trained, train
from tests.slots.tiny import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")
WORLD = 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank_main(rank: int, port: int, config, out: str, kill_at_step: int) -> None:
    """One torchrun worker: the environment torchrun gives it, then `train`; killed at its
    `kill_at_step`-th update (0: never), as a SIGKILL from outside would."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    update, steps = train_module.optimise, []

    def optimise(*args, **kwargs):
        steps.append(1)
        if len(steps) == kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        return update(*args, **kwargs)

    train_module.optimise = optimise
    train(config, out)


def launch(config, out, kill_at_step: int = 0) -> None:
    mp.start_processes(_rank_main, args=(free_port(), config, str(out), kill_at_step), nprocs=WORLD,
                       start_method="fork")


def history(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize(
    "decoder, max_train",
    [
        ("sbd", 0),  # 24 images: global batches of 8 (drop_last), shares of 4 and 4
        ("diffusion", 7),  # one short global batch of 7 a pass: shares of 4 and 3, weighted by size
    ],
)
def test_two_ranks_train_like_one_process_of_their_global_batch_resume_and_score_each_image_once(
    decoder, max_train, cache, tmp_path
):
    vae = tmp_path / "vae.pt"
    torch.manual_seed(0)
    torch.save(VQVAE.small(num_codes=16).state_dict(), vae)
    # 7 val images: shards of 4 and 3; the first 5 reconstructed (images 0, 2, 4 on rank 0, 1 and 3 on rank 1)
    settings = dict(n_train=24, max_train=max_train, n_val=7, slot_init="learned", epochs=2, steps_per_epoch=2, lr=1e-2,
                    eval_batch_size=1, recon_max_images=5, vae=str(vae) if decoder == "diffusion" else None)
    config = tiny_config(cache, decoder, batch_size=4, **settings)
    # first the one process (it also builds the scene cache, and imports what Adam imports lazily, seconds
    # that the forked ranks then inherit)
    one = train(tiny_config(cache, decoder, batch_size=8, **settings), tmp_path / "one")
    out = tmp_path / "ddp"
    with pytest.raises(mp.ProcessExitedException, match="SIGKILL"):
        launch(config, out, kill_at_step=3)  # the first update of epoch 2: rank 0 has saved epoch 1
    assert [r["epoch"] for r in history(out)] == [0] and not (out / "metrics.json").exists()
    launch(config, out)

    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["world_size"], one["world_size"]) == (2, 1)
    ddp, reference = history(out), history(tmp_path / "one")
    assert [r["epoch"] for r in ddp] == [0, 1]
    for key in ("train/loss", "val/loss", "val/ari", "val/fg_ari", "lr"):
        assert [r[key] for r in ddp] == pytest.approx([r[key] for r in reference], rel=1e-5), key
    weights = [torch.load(run / "checkpoints" / "last.pt", weights_only=True)["objects"]["model"]
               for run in (out, tmp_path / "one")]
    # Adam divides each gradient by its own running size, so where a gradient is near 0 (a bias that starts
    # at zero) float noise in it moves the weight by up to lr a step: close, not equal (seen: 1.2e-4 here)
    torch.testing.assert_close(*weights, rtol=1e-3, atol=2e-3)
    if decoder == "diffusion":  # prepared from the whole first global batch, not from rank 0's share
        assert metrics["latent_scale"] == pytest.approx(one["latent_scale"], rel=1e-6)

    # the scores every rank gathered equal one process's evaluation of the same checkpoint, to the last bit
    scores = evaluate(load_trained(config, out, torch.device("cpu")), make_loaders(config).val, torch.device("cpu"),
                      max_recon_images=5, seed=config.seed)
    assert {key: metrics[key] for key in ("ari", "fg_ari", "miou", "mse")} == {
        key: scores[key] for key in ("ari", "fg_ari", "miou", "mse")}
    assert metrics["val_images"] == scores["images"] == 7
