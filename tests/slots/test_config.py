"""Run configs: presets with a shared part and a section per decoder, flags over both, and the presets."""

import pytest
import yaml

from col775.slots.config import SlotsConfig, load_slots_config, run_fields
from col775.slots.sbd import course_config


def write_preset(path, values) -> str:
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_a_decoder_takes_the_shared_values_then_its_section_then_the_flags(tmp_path):
    preset = write_preset(tmp_path / "p.yaml", {"lr": 0.1, "epochs": 4, "sbd": {"lr": 0.2}, "diffusion": {"lr": 0.3, "epochs": 5}})
    assert (load_slots_config(preset, {}, "sbd").lr, load_slots_config(preset, {}, "sbd").epochs) == (0.2, 4)
    assert (load_slots_config(preset, {}, "diffusion").lr, load_slots_config(preset, {}, "diffusion").epochs) == (0.3, 5)
    flags = {"lr": "0.5", "epochs": "7", "batch_size": None}
    for decoder in ("sbd", "diffusion"):
        config = load_slots_config(preset, flags, decoder)
        assert (config.decoder, config.lr, config.epochs, config.batch_size) == (decoder, 0.5, 7, 64)


def test_bad_presets_and_values_name_their_source(tmp_path):
    with pytest.raises(ValueError, match=r"p.yaml.*unknown field"):
        load_slots_config(write_preset(tmp_path / "p.yaml", {"diffusion": {"unet_width": 3}}), {}, "diffusion")
    with pytest.raises(ValueError, match=r"q.yaml.*'sbd:' must be a mapping"):
        load_slots_config(write_preset(tmp_path / "q.yaml", {"sbd": 3}), {}, "sbd")
    with pytest.raises(ValueError, match="command line.*epochs"):
        load_slots_config(None, {"epochs": "1.5"})
    with pytest.raises(ValueError, match="decoder must be one of"):
        SlotsConfig(decoder="transformer")
    with pytest.raises(ValueError, match="scene_style must be one of"):
        SlotsConfig(scene_style="flat")
    with pytest.raises(ValueError, match="slot_gradient="):
        SlotsConfig(slot_gradient="none").model_config()


def test_a_run_records_only_its_own_decoders_fields():
    sbd, diffusion = run_fields(SlotsConfig(decoder="sbd")), run_fields(SlotsConfig(decoder="diffusion"))
    assert "decoder_channels" in sbd and "unet_base_channels" not in sbd and "vae" not in sbd
    assert "unet_base_channels" in diffusion and "vae" in diffusion and "decoder_channels" not in diffusion
    assert not {"sampler", "fid", "figure_images"} & (set(sbd) | set(diffusion))


def test_course_preset_is_the_papers_model_and_the_assignments_diffusion_decoder():
    sbd = load_slots_config("course", {}, "sbd")
    assert sbd.model_config() == course_config()
    assert (sbd.lr, sbd.warmup_steps, sbd.decay_rate, sbd.decay_steps, sbd.batch_size) == (4e-4, 10_000, 0.5, 100_000, 64)
    assert (sbd.num_slots, sbd.slot_dim, sbd.slot_iters, sbd.image_size) == (11, 64, 3, 128)
    diffusion = load_slots_config("course", {}, "diffusion")
    assert diffusion.encoder_config() == sbd.encoder_config()
    assert (diffusion.vae_arch, diffusion.num_timesteps, diffusion.beta_start, diffusion.beta_end) == ("course", 1000, 0.0015, 0.0195)
    assert diffusion.sampler == "ancestral" and diffusion.sampler_label() == "ancestral, 1000 steps"


def test_demo_preset_is_small_and_trains_the_sbd_with_the_cpu_presets_recipe():
    cpu = load_slots_config("cpu", {}, "sbd")
    for decoder in ("sbd", "diffusion"):
        config = load_slots_config("demo", {}, decoder)
        assert config.image_size == 32 and config.scene_style == "simple" and config.n_train <= 2000
        assert (config.min_objects, config.max_objects, config.num_slots) == (cpu.min_objects, cpu.max_objects, cpu.num_slots)
        assert (config.slot_gradient, config.position_init_gain) == ("bi-level", 0.1)
    sbd = load_slots_config("demo", {}, "sbd")
    assert sbd.model_config().image_size == 32 and sbd.bf16
    assert sbd.epochs * sbd.steps_per_epoch <= 2500 and sbd.warmup_steps == cpu.warmup_steps
    # the penalty starts after the slots bind (about 1,000 steps), as in the cpu preset
    assert sbd.mask_entropy_weight == cpu.mask_entropy_weight and sbd.mask_entropy_start >= 1000
    diffusion = load_slots_config("demo", {}, "diffusion")
    assert diffusion.epochs * diffusion.steps_per_epoch <= 1000 and diffusion.sampler_label() == "DDIM, 25 steps"


def test_cpu_preset_finds_objects_in_simple_scenes_with_the_binding_options_for_both_decoders():
    for decoder in ("sbd", "diffusion"):
        config = load_slots_config("cpu", {}, decoder)
        assert (config.scene_style, config.image_size, config.n_val) == ("simple", 32, 500)
        assert (config.min_objects, config.max_objects, config.num_slots) == (2, 6, 7)  # K = the most objects + 1
        assert (config.slot_init, config.slot_gradient, config.position_init_gain) == ("learned", "bi-level", 0.1)
    sbd = load_slots_config("cpu", {}, "sbd")
    assert sbd.model_config().image_size == 32 and sbd.epochs * sbd.steps_per_epoch == 18_000
    assert (sbd.mask_entropy_weight, sbd.mask_entropy_start, sbd.mask_entropy_full) == (0.05, 1500, 3000)
    assert load_slots_config("cpu", {}, "diffusion").mask_entropy_weight == 0  # an SBD setting only
    paper = load_slots_config("cpu", {"slot_init": "gaussian", "slot_gradient": "full", "position_init_gain": 1.0})
    assert paper.encoder_config().slot_init == "gaussian"
