"""Benchmark of the VideoScene leap student (and the DDIM teacher) per memory mode.

    python benchmarks/bench_leap.py --size full --device cuda            # GPU: CogVideoX-5B-I2V layout, random bf16
    python benchmarks/bench_leap.py --size tiny --device cpu             # CPU: tiny model, ratios only

--size full builds the REAL CogVideoX-5B-I2V transformer and VAE configs with random weights directly on the device
(no download), 49 frames at 480x720, a random [1,226,4096] prompt embedding. For each memory mode (default: everything
resident; offload: VAE and transformer never resident together + VAE tiling; sequential: the transformer streamed
block by block + VAE tiling) it reports wall time of encode / transformer / decode and end to end (median over
--repeats runs after one warm-up), and peak GPU memory (torch.cuda.max_memory_allocated). Then the teacher with
--teacher-steps DDIM steps once, for the 1-step vs N-step ratio. Absolute times only mean something on a GPU;
on the CPU read the ratios.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vscene_engine.video import leap  # noqa: E402
from vscene_engine.video.model import DevicePlacer, StreamingPlacer, VideoModel  # noqa: E402


def build(size: str, device: str, dtype: torch.dtype) -> VideoModel:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

    from vscene_engine.video.loading import (COGVIDEOX_5B_I2V_TRANSFORMER_CONFIG, COGVIDEOX_5B_SCHEDULER_CONFIG,
                                             COGVIDEOX_5B_VAE_CONFIG)
    if size == "full":
        tcfg, vcfg = dict(COGVIDEOX_5B_I2V_TRANSFORMER_CONFIG), dict(COGVIDEOX_5B_VAE_CONFIG)
    else:
        tcfg = dict(num_attention_heads=2, attention_head_dim=16, in_channels=32, out_channels=16, time_embed_dim=16,
                    text_embed_dim=32, num_layers=2, sample_width=12, sample_height=8, sample_frames=49,
                    max_text_seq_length=226, use_rotary_positional_embeddings=True,
                    use_learned_positional_embeddings=True)
        vcfg = dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=16,
                    sample_height=64, sample_width=96, scaling_factor=0.7)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # random init directly in the compute dtype (no fp32 copy of 5B weights)
    try:
        with torch.device(device):
            tr = CogVideoXTransformer3DModel(**{k: v for k, v in tcfg.items() if not k.startswith("_")})
            vae = AutoencoderKLCogVideoX(**{k: v for k, v in vcfg.items() if not k.startswith("_")})
    finally:
        torch.set_default_dtype(old)
    tr.eval().requires_grad_(False)
    vae.eval().requires_grad_(False)
    emb = torch.randn(1, tcfg["max_text_seq_length"], tcfg["text_embed_dim"])
    return VideoModel(transformer=tr, vae=vae, scheduler_config=dict(COGVIDEOX_5B_SCHEDULER_CONFIG),
                      prompt_embeds=emb, negative_prompt_embeds=torch.zeros_like(emb), dtype=dtype,
                      device=torch.device(device), name=f"cogvideox-5b-i2v-random ({size})")


def run_mode(model: VideoModel, mode: str, inputs, repeats: int, t: int) -> dict:
    dev = model.device
    tiling = mode != "default" and model.native_size[0] >= 480  # diffusers' tiling is made for 480x720
    if mode == "default":
        model.placer = DevicePlacer(dev)
    elif mode == "offload":
        model.placer = DevicePlacer(dev, offload_to="cpu")
    else:
        model.placer = StreamingPlacer(dev, offload_to="cpu")
    if mode != "default":  # start from the offloaded state, as a ComfyUI run would
        model.transformer.to("cpu")
        model.vae.to("cpu")
    cuda = dev.type == "cuda"
    runs = []
    for i in range(repeats + 1):
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        r = leap.leap_sample(model, *inputs, timestep=t, seed=i, vae_tiling=tiling)
        if cuda:
            torch.cuda.synchronize(dev)
        wall = time.perf_counter() - t0
        rec = {"wall_s": wall, **{k: r.info[k] for k in ("encode_s", "transformer_s", "decode_s")}}
        if cuda:
            rec["peak_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        if i > 0:  # first run is the warm-up (kernels, allocator, first transfer)
            runs.append(rec)
        else:
            warm = rec
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    if cuda:
        med["peak_gib"] = max(r["peak_gib"] for r in runs + [warm])
    return {"mode": mode, "vae_tiling": tiling, "median": med, "warmup": warm, "runs": runs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default=None)
    ap.add_argument("--modes", default="default,offload,sequential")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--teacher-steps", type=int, default=50)
    ap.add_argument("--t", type=int, default=549)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(args.dtype) or (
        torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    t0 = time.perf_counter()
    model = build(args.size, args.device, dtype)
    print(f"built {model.name}: {model.n_params / 1e9:.3f}B transformer parameters, {dtype}, "
          f"{time.perf_counter() - t0:.1f}s", flush=True)
    H, W = model.native_size
    F = model.native_frames
    g = torch.Generator().manual_seed(0)
    video = torch.rand(F, H, W, 3, generator=g)
    inputs = (video[0], video[-1], video)
    out = {"size": args.size, "device": str(args.device), "dtype": str(dtype), "frames": F, "height": H, "width": W,
           "params": model.n_params, "modes": []}
    if args.device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(0)
    for mode in [m for m in args.modes.split(",") if m]:
        res = run_mode(model, mode, inputs, args.repeats, args.t)
        out["modes"].append(res)
        m = res["median"]
        print(f"{mode:10s} encode {m['encode_s']:.3f}s  transformer {m['transformer_s']:.3f}s  decode "
              f"{m['decode_s']:.3f}s  end-to-end {m['wall_s']:.3f}s"
              + (f"  peak {m['peak_gib']:.2f} GiB" if "peak_gib" in m else ""), flush=True)
    if args.teacher_steps:
        model.placer = DevicePlacer(model.device)
        one = min(r["median"]["transformer_s"] for r in out["modes"]) if out["modes"] else None
        t0 = time.perf_counter()
        r = leap.teacher_sample(model, *inputs, steps=args.teacher_steps, seed=0, vae_tiling=False)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        out["teacher"] = {"steps": args.teacher_steps, "wall_s": wall, "transformer_s": r.info["transformer_s"]}
        leap1 = next((x["median"]["wall_s"] for x in out["modes"] if x["mode"] == "default"), None)
        msg = f"teacher {args.teacher_steps} steps: {wall:.2f}s end to end, transformer {r.info['transformer_s']:.2f}s"
        if leap1:
            out["teacher"]["ratio_end_to_end"] = wall / leap1
            msg += f"; {wall / leap1:.1f}x the 1-step student end to end"
        if one:
            out["teacher"]["ratio_transformer"] = r.info["transformer_s"] / one
            msg += f", {r.info['transformer_s'] / one:.1f}x its transformer time"
        print(msg, flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
