"""`col775 slots study --decoder both`: both studies, one report, and the table that compares them."""

import dataclasses
import json

import col775.slots.diffusion_study as diffusion_study
from col775.slots.diffusion_study import run_decoders
from col775.slots.slot_diffusion import SlotDiffusionConfig
from tests.slots.test_study import tiny_config
from tests.slots.test_train_diffusion import tiny_config as tiny_diffusion


def test_both_decoders_share_data_and_encoder_and_are_compared(tmp_path, monkeypatch):
    config = tiny_config(tmp_path / "cache", decoder="both", fid=False, epochs=1)

    def tiny_preset(sbd, preset="diffusion-course") -> SlotDiffusionConfig:
        # The real presets train for minutes; keep the shared fields and a tiny diffusion model.
        shared = {name: getattr(sbd, name) for name in diffusion_study.SHARED_FIELDS}
        return dataclasses.replace(tiny_diffusion(tmp_path), **shared, decoder="diffusion")

    monkeypatch.setattr(diffusion_study, "diffusion_config_from", tiny_preset)
    run_decoders(config, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary) == {"spatial broadcast", "latent diffusion"}
    for numbers in summary.values():
        assert -1 <= numbers["ari"] <= 1 and numbers["mse"] >= 0
    md = (tmp_path / "out" / "report.md").read_text()
    comparison = md.split("## Spatial broadcast vs latent diffusion decoder", 1)[1]
    assert "| spatial broadcast |" in comparison and "| latent diffusion |" in comparison
    # the two runs saw the same scenes: the diffusion run reused the spatial-broadcast run's settings
    sbd = json.loads((tmp_path / "out" / "sbd-study" / "sbd" / "metrics.json").read_text())
    diffusion = json.loads((tmp_path / "out" / "diffusion-study" / "diffusion" / "metrics.json").read_text())
    assert sbd["data"]["n_val"] == diffusion["data"]["n_val"] == config.n_val
