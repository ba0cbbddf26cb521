"""Write the two example photos the two-photo templates open with (workflows/input/videoscene_view_{a,b}.png).

The engine's procedural tabletop (vscene_engine.tools.synthetic.procedural_scene, seed 0) rendered over white from
vscene_engine.tools.synthetic.demo_cameras at 512x384, horizontal FOV 55 degrees (the templates' fov_deg): the two
cameras are ~0.7 scene units apart, ~3 units from the objects, and both turn towards them (~13 degrees of relative
rotation). Deterministic; the pack copies them into ComfyUI's input folder when no file of that name exists there
(nodes/host.py install_example_inputs).

usage: python scripts/make_example_photos.py [--out workflows/input]
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("videoscene_view_a.png", "videoscene_view_b.png")
WIDTH, HEIGHT, FOV_DEG = 512, 384, 55.0


def render_pair():
    """The two photos as uint8 arrays [H, W, 3]."""
    import torch

    from vscene_engine.render.rasterize import render
    from vscene_engine.tools.synthetic import demo_cameras, procedural_scene

    with torch.no_grad():
        rgb = render(procedural_scene(seed=0), demo_cameras(WIDTH, HEIGHT, FOV_DEG), background=(1.0, 1.0, 1.0)).rgb
    return [(im.clamp(0, 1) * 255).round().to(torch.uint8).numpy() for im in rgb]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "workflows" / "input"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from PIL import Image

    from vscene_engine.core.atomic import atomic_write_bytes

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, arr in zip(NAMES, render_pair()):
        buf = io.BytesIO()
        # 256-colour palette PNG (no dithering): ~70 KB instead of ~190 KB for the RGB one; LoadImage reads it as RGB
        Image.fromarray(arr, "RGB").quantize(256, dither=Image.Dither.NONE).save(buf, format="PNG", optimize=True)
        atomic_write_bytes(out / name, buf.getvalue())
        print(f"wrote {out / name} ({len(buf.getvalue()) // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
