"""MVSplat encoder: forward time at 256x256 (the official RealEstate10K model) and a fern smoke run.

Usage (from the repository root)::

    python benchmarks/bench_mvsplat.py [--device cpu|cuda] [--dtype fp32|bf16|fp16] [--runs 5] [--threads N]
                                       [--weights re10k.ckpt|.safetensors] [--fern] [--out FILE.json]

Timing: the official re10k configuration (:meth:`MVSplatConfig.re10k`, 11.96 M parameters; ``--weights`` loads a
real checkpoint instead of the seeded random initialisation), 2 context views of 256x256, batch 1, ``no_grad``;
one warm-up forward, then ``--runs`` timed forwards (CUDA: synchronised), median / min / max in ms. MVSplat reports
44 ms per forward on an RTX 4090 class GPU (paper, Table 1, encoder + rendering of its setting); compare absolute
numbers only on a GPU.

``--fern`` (needs ``../shared/data/llff_fern``; skipped with a message otherwise): the first and the last photo with
their true poses -> ``coarse_prior(PriorConfig(method="mvsplat"))`` (official input conventions: short side 256, centre crop,
normalized intrinsics, near / far = the scene's LLFF bounds) and, for reference, ``method="stereo"``; both scenes are
rendered at the 18 held-out cameras (black background) and scored by PSNR against the photos. With random weights
the MVSplat numbers only show that the path runs end to end on real data (a SMOKE run): the real numbers come when
the official checkpoint is given with ``--weights``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vscene_engine.prior.mvsplat import MVSplatConfig, MVSplatEncoder, load_mvsplat  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FERN = Path(__file__).resolve().parents[2] / "shared" / "data" / "llff_fern"


def make_encoder(weights, device, dtype):
    if weights:
        return load_mvsplat(weights, device=device, dtype=dtype), f"weights {Path(weights).name}"
    torch.manual_seed(0)
    return MVSplatEncoder(MVSplatConfig.re10k()).to(device=device, dtype=dtype).eval(), "random (seed 0)"


def inputs_256(device, dtype):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(1, 2, 3, 256, 256, generator=g)
    ext = torch.eye(4).repeat(1, 2, 1, 1)
    ext[0, 1, 0, 3] = 0.3
    k = torch.tensor([[0.9, 0, 0.5], [0, 0.9, 0.5], [0, 0, 1]]).repeat(1, 2, 1, 1)
    return (images.to(device, dtype), ext.to(device, dtype), k.to(device, dtype), torch.ones(1, 2, device=device),
            torch.full((1, 2), 100.0, device=device))


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_forward(enc, device, dtype, runs):
    x = inputs_256(device, dtype)
    times = []
    with torch.no_grad():
        for i in range(runs + 1):
            sync(device)
            t0 = time.perf_counter()
            out = enc(*x)
            sync(device)
            if i:
                times.append((time.perf_counter() - t0) * 1000)
    peak = None
    if torch.device(device).type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "runs": runs,
            "gaussians": int(out["means"].shape[1]), "peak_mem_mib": peak}


def fern_smoke(enc, device):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from nvs_fern import evaluate, load_fern
    from vscene_engine.prior.coarse import PriorConfig, coarse_prior

    cams, imgs, names = load_fern(FERN, 504)
    ins = [0, len(names) - 1]
    held = [i for i in range(len(names)) if i not in ins]
    ic = cams[torch.tensor(ins)]
    near, far = float(cams.near.min()), float(cams.far.max())
    rows = {}
    for method in ("mvsplat", "stereo"):
        t0 = time.perf_counter()
        cfg = PriorConfig(method=method, near=near, far=far)  # near / far: MVSplat's range (stereo: unused)
        res = coarse_prior(imgs[ins], ic, cfg, mvsplat=enc if method == "mvsplat" else None)
        dt = time.perf_counter() - t0
        ev = evaluate(res.scene, cams[torch.tensor(held)], imgs[held], (0.0, 0.0, 0.0))
        rows[method] = {"seconds": dt, "n_gaussians": len(res.scene), "psnr": ev["psnr"], "ssim": ev["ssim"]}
    return {"inputs": [names[i] for i in ins], "held_out": len(held), "size": [cams.width, cams.height],
            "near": near, "far": far, **rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--fern", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    enc, source = make_encoder(a.weights, a.device, DTYPES[a.dtype])
    report = {"command": " ".join(sys.argv), "device": str(a.device), "dtype": a.dtype, "weights": source,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": platform.processor() or
              platform.machine(), "params_m": sum(p.numel() for p in enc.parameters()) / 1e6}
    if torch.device(a.device).type == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    report["forward_256"] = time_forward(enc, a.device, DTYPES[a.dtype], a.runs)
    f = report["forward_256"]
    print(f"MVSplat re10k encoder, 2 views 256x256, {a.device} {a.dtype}, {report['threads']} threads, "
          f"{report['params_m']:.2f} M params ({source}): median {f['median_ms']:.1f} ms "
          f"(min {f['min_ms']:.1f}, max {f['max_ms']:.1f}, {f['runs']} runs), {f['gaussians']} Gaussians"
          + (f", peak {f['peak_mem_mib']:.0f} MiB" if f["peak_mem_mib"] else ""))
    if a.fern:
        if not FERN.is_dir():
            print(f"fern: skipped (no data at {FERN})")
        else:
            enc32 = enc.float()
            r = report["fern"] = fern_smoke(enc32, a.device)
            tag = "SMOKE RUN, random weights" if not a.weights else source
            print(f"fern ({r['inputs'][0]} + {r['inputs'][1]} -> {r['held_out']} held-out views at "
                  f"{r['size'][0]}x{r['size'][1]}, near/far {r['near']:.2f}/{r['far']:.2f}):")
            for m in ("mvsplat", "stereo"):
                x = r[m]
                print(f"  {m:8s}{' (' + tag + ')' if m == 'mvsplat' else '':34s} PSNR {x['psnr']:6.2f} dB  SSIM "
                      f"{x['ssim']:.3f}  {x['n_gaussians']:7d} Gaussians  {x['seconds']:6.1f} s")
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
