"""The latent diffusion decoder: VQ-VAE (vae.py), slot-conditioned UNet (unet.py), DDPM/DDIM (ddpm.py),
and the model that joins them to the slot encoder (model.py)."""
