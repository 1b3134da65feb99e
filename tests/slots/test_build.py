"""Reading a VAE file: its architecture comes from its shapes, whatever the preset says; strict loading."""

import pytest
import torch

from col775.slots.build import build_vae, load_vae
from col775.slots.diffusion.vae import VQVAE


@pytest.mark.parametrize("make", [
    lambda: VQVAE(),  # the course's architecture (the shape of vae_checkpoint.pth)
    lambda: VQVAE.small(num_codes=32),
    lambda: build_vae("tiny", 128),
    lambda: VQVAE(channels=8, channel_mults=(1, 2), num_res_blocks=3, num_codes=16, norm_groups=8),
])
def test_any_saved_vae_loads_strictly_into_the_architecture_of_its_shapes(tmp_path, make):
    torch.manual_seed(0)
    vae = make()
    path = tmp_path / "vae.pt"
    torch.save(vae.state_dict(), path)
    loaded = load_vae(path)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in vae.state_dict().items()}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in vae.state_dict().items())
    groups = {m.num_groups for m in loaded.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {m.num_groups for m in vae.modules() if isinstance(m, torch.nn.GroupNorm)}
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.eval()(images)[0], vae.eval()(images)[0])


def test_a_missing_wrapped_or_truncated_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_vae(tmp_path / "missing.pt")
    torch.save({"model": {"weights": torch.zeros(1)}}, tmp_path / "wrapped.pt")
    with pytest.raises(ValueError, match="wrapped.pt"):
        load_vae(tmp_path / "wrapped.pt")
    state = VQVAE.small(num_codes=32).state_dict()
    state.pop("post_quant_conv.bias")
    torch.save(state, tmp_path / "truncated.pt")
    with pytest.raises(ValueError, match="truncated.pt"):
        load_vae(tmp_path / "truncated.pt")
