"""Object-centric learning: Slot Attention autoencoders and slot-conditioned diffusion (assignment 2)."""
