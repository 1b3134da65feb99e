"""The course VQ-VAE: checkpoint-compatible names, shapes, exact quantisation, codebook upkeep."""

from pathlib import Path

import pytest
import torch

from col775.slots.diffusion.vae import VQVAE, codebook_usage, restart_dead_codes

# The course's listing sits in shared/specs/ beside the repository (../shared/specs from its root).
SPEC = Path(__file__).resolve().parents[3].parent / "shared" / "specs" / "course-vae-state-dict.txt"


def _parse_state_dict_listing(path: Path) -> dict[str, tuple[int, ...]]:
    """Lines like `encoder.conv_in.weight (64, 3, 3, 3)` -> {key: shape}."""
    shapes = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        key, shape = line.split(" ", 1)
        shapes[key] = tuple(int(n) for n in shape.strip("()").split(",") if n.strip())
    return shapes


@pytest.mark.skipif(not SPEC.exists(), reason=f"course state-dict listing {SPEC} is not on this machine")
def test_state_dict_matches_course_checkpoint_listing():
    expected = _parse_state_dict_listing(SPEC)
    assert len(expected) == 205
    assert sum(torch.Size(s).numel() for s in expected.values()) == 13_857_886
    ours = {k: tuple(v.shape) for k, v in VQVAE().state_dict().items()}
    assert set(ours) == set(expected), (set(ours) ^ set(expected))
    assert ours == expected
    # A checkpoint with exactly those keys loads strictly.
    fake_ckpt = {k: torch.zeros(s) for k, s in expected.items()}
    VQVAE().load_state_dict(fake_ckpt, strict=True)


def test_encode_decode_shapes_course_and_small():
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    for vae in (VQVAE(), VQVAE.small()):
        with torch.no_grad():
            z = vae.encode(x)
            assert z.shape == (1, 3, 32, 32)
            assert vae.decode(z[..., :16, :16]).shape == (1, 3, 64, 64)  # any latent size decodes at 4x
    with torch.no_grad():
        recon, vq_loss, indices = VQVAE.small()(x)
    assert recon.shape == (1, 3, 128, 128)
    assert vq_loss.dim() == 0 and vq_loss >= 0
    assert indices.shape == (1, 32, 32)


def test_bad_configuration_and_input_raise_clear_errors():
    with pytest.raises(ValueError, match="norm_groups"):
        VQVAE(channels=20, norm_groups=32)
    with pytest.raises(ValueError, match="128x128"):
        VQVAE.small().encode(torch.zeros(1, 1, 128, 128))


def test_nearest_is_the_same_in_chunks():
    torch.manual_seed(5)
    quantizer = VQVAE.small(num_codes=64).quantize
    flat = torch.randn(1000, 3)
    assert torch.equal(quantizer.nearest(flat, chunk=7), quantizer.nearest(flat, chunk=4096))


def test_quantize_picks_exact_nearest_rows_against_cdist():
    torch.manual_seed(0)
    vae = VQVAE.small(num_codes=300).double()
    vae.quantize.embedding.weight.data.normal_()
    z = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    zq, _, indices = vae.quantize(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    brute = torch.cdist(flat, vae.quantize.embedding.weight).argmin(dim=1)
    assert torch.equal(indices.flatten(), brute)
    expected_zq = vae.quantize.embedding.weight[brute].view(2, 8, 8, 3).permute(0, 3, 1, 2)
    assert torch.allclose(zq, expected_zq, atol=1e-12)


def test_quantize_float32_distance_is_minimal():
    torch.manual_seed(1)
    vae = VQVAE()  # course codebook: 4096 rows
    vae.quantize.embedding.weight.data.normal_()
    z = torch.randn(1, 3, 16, 16)
    _, _, indices = vae.quantize(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    dist = torch.cdist(flat.double(), vae.quantize.embedding.weight.double())
    chosen = dist.gather(1, indices.view(-1, 1)).squeeze(1)
    assert torch.allclose(chosen, dist.min(dim=1).values, atol=1e-5)


def test_vq_loss_is_codebook_plus_beta_commitment():
    torch.manual_seed(2)
    vae = VQVAE.small(num_codes=16)
    z = torch.randn(2, 3, 4, 4)
    zq, loss, indices = vae.quantize(z)
    e = vae.quantize.embedding.weight[indices].permute(0, 3, 1, 2)
    assert torch.allclose(loss, 1.25 * ((z - e) ** 2).mean())
    assert torch.allclose(zq, e, atol=1e-6)  # straight-through value equals the codebook row


def test_straight_through_gradient_reaches_encoder_and_codebook():
    torch.manual_seed(3)
    vae = VQVAE.small(num_codes=32)
    recon, vq_loss, _ = vae(torch.rand(1, 3, 32, 32) * 2 - 1)
    (recon.pow(2).mean() + vq_loss).backward()
    assert vae.encoder.conv_in.weight.grad is not None
    assert vae.encoder.conv_in.weight.grad.abs().sum() > 0
    assert vae.quant_conv.weight.grad.abs().sum() > 0
    assert vae.quantize.embedding.weight.grad.abs().sum() > 0
    # Without the VQ loss the encoder still gets a gradient only through the straight-through copy.
    vae.zero_grad()
    recon, _, _ = vae(torch.rand(1, 3, 32, 32) * 2 - 1)
    recon.pow(2).mean().backward()
    assert vae.encoder.conv_in.weight.grad.abs().sum() > 0


def test_codebook_usage_perplexity_and_fraction():
    uniform = codebook_usage(torch.arange(8).repeat(5), num_codes=16)
    assert uniform.used_fraction == 0.5
    assert uniform.perplexity == pytest.approx(8.0)
    collapsed = codebook_usage(torch.full((10,), 3), num_codes=16)
    assert collapsed.perplexity == pytest.approx(1.0)
    assert collapsed.counts[3] == 10 and collapsed.counts.sum() == 10
    with pytest.raises(ValueError):
        codebook_usage(torch.tensor([20]), num_codes=16)


def test_restart_dead_codes_changes_only_unused_rows():
    torch.manual_seed(4)
    vae = VQVAE.small(num_codes=10)
    before = vae.quantize.embedding.weight.detach().clone()
    counts = torch.tensor([3, 0, 1, 0, 0, 7, 2, 0, 1, 1])
    z_batch = torch.randn(2, 3, 4, 4) * 5
    restarted = restart_dead_codes(vae, z_batch, counts)
    after = vae.quantize.embedding.weight.detach()
    dead = counts == 0
    assert restarted == int(dead.sum())
    assert torch.equal(after[~dead], before[~dead])
    assert not torch.isclose(after[dead], before[dead]).all(dim=1).any()
    # Every restarted row is one of the encoder outputs it was given.
    candidates = z_batch.permute(0, 2, 3, 1).reshape(-1, 3)
    assert (torch.cdist(after[dead], candidates).min(dim=1).values < 1e-6).all()
    assert restart_dead_codes(vae, z_batch, torch.ones(10)) == 0
    with pytest.raises(ValueError, match="usage_counts"):
        restart_dead_codes(vae, z_batch, torch.ones(3))
