"""Shared test fixture: a tiny random CogVideoX I2V transformer + VAE (diffusers classes) and the CogVideoX-5B
scheduler config, written out independently of the engine's constants (so tests check them)."""
from __future__ import annotations

import torch

SCHED_5B = {"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
            "clip_sample_range": 1.0, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
            "rescale_betas_zero_snr": True, "sample_max_value": 1.0, "set_alpha_to_one": True,
            "snr_shift_scale": 1.0, "steps_offset": 0, "timestep_spacing": "trailing", "trained_betas": None}
FRAMES, H, W = 9, 64, 96


def tiny_modules(seed: int = 0):
    """(transformer, vae): 2 layers, learned positional embeddings + RoPE, 9 frames at 64x96, text [1, 12, 24];
    weights perturbed so nothing is zero. Deterministic from ``seed``."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    tr = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=32, out_channels=16, time_embed_dim=16,
        text_embed_dim=24, num_layers=2, sample_width=W // 8, sample_height=H // 8, sample_frames=FRAMES,
        max_text_seq_length=12, use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True)
    vae = AutoencoderKLCogVideoX(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4,
                                 latent_channels=16, sample_height=H, sample_width=W, scaling_factor=0.7)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in list(tr.parameters()) + list(vae.parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return tr.eval(), vae.eval()
