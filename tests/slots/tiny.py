"""The tiny config the slots tests train with: both decoders' fields at a few seconds' size."""

from col775.slots.config import SlotsConfig


def tiny_config(cache_dir, decoder: str = "sbd", **overrides) -> SlotsConfig:
    values = dict(
        decoder=decoder, cache_dir=str(cache_dir), image_size=16, n_train=24, n_val=6, max_objects=2, num_slots=3,
        slot_dim=8, slot_hidden_dim=16, encoder_channels=[8, 8], encoder_strides=[2, 1], decoder_broadcast=4,
        decoder_channels=[8, 8], decoder_strides=[2, 2], vae_arch="small", vae_num_codes=16, vae_epochs=1,
        vae_steps_per_epoch=1, vae_batch_size=4, unet_base_channels=8, unet_channel_mults=[1, 2],
        unet_num_res_blocks=1, unet_attention_resolutions=[2], unet_head_channels=8, unet_norm_groups=4,
        num_timesteps=20, sampler_steps=3, batch_size=8, eval_batch_size=8, epochs=3, steps_per_epoch=2,
        warmup_steps=2, decay_steps=100, val_every=1, device="cpu", figure_images=2, fid=False, fid_batch_size=4,
    )  # fmt: skip
    return SlotsConfig(**(values | overrides))
