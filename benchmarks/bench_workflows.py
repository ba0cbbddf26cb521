"""End-to-end seconds of the pack's two-photo workflows in a running ComfyUI, on the real fern photos.

usage: python benchmarks/bench_workflows.py --url http://127.0.0.1:8188 [--size 384] [--runs 2] [--workflows ...]

Start ComfyUI with this pack installed (``python main.py --cpu`` on a CPU machine) and nothing else running on the
machine (a browser tab with the graph open costs CPU too: close it). The script uploads fern photos 0 and 4 from
``../shared/data/llff_fern/images_8`` (skips when absent), puts them and ``--size`` into the API-format prompt of each
template (``benchmarks/workflow_prompts/*.api.json``, exported from ``workflows/*.json`` with the frontend's
"Export (API)"), with ``fov_deg`` 0 (auto: unposed photos without EXIF), queues it and times it until ComfyUI's
history says it finished. Before every run it asks the server to drop its cached outputs and models (``POST /free``),
so each run computes everything; the first run of a fresh server also compiles the numba kernels once per process
(cached on disk afterwards). Prints one line per run and a markdown table.
"""
from __future__ import annotations

import argparse
import json
import time
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "llff_fern" / "images_8"
PROMPTS = HERE / "workflow_prompts"
PHOTOS = ("image000.png", "image004.png")


def _request(url: str, data: bytes | None = None, headers: dict | None = None) -> dict:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(req, timeout=60) as r:
        body = r.read()
    return json.loads(body) if body else {}


def _post_json(url: str, payload: dict) -> dict:
    return _request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def upload(url: str, path: Path, name: str) -> str:
    """POST /upload/image (multipart) -> the name ComfyUI stored the photo under in its input folder."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + path.read_bytes() + (
        f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n"
        f"--{boundary}--\r\n").encode()
    out = _request(f"{url}/upload/image", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return out["name"]


def prepare(prompt: dict, photos: list[str], size: int) -> dict:
    """The template's prompt with the fern photos (in LoadImage order), ``size`` and auto FOV."""
    prompt = json.loads(json.dumps(prompt))
    loaders = sorted((k for k, v in prompt.items() if v["class_type"] == "LoadImage"), key=int)
    if len(loaders) != 2:
        raise ValueError(f"expected 2 LoadImage nodes in the prompt, found {len(loaders)}")
    for k, name in zip(loaders, photos):
        prompt[k]["inputs"]["image"] = name
    for v in prompt.values():
        if v["class_type"] == "LoadViewPair":
            v["inputs"].update(size=size, fov_deg=0, cameras_from="estimate")
    return prompt


def run(url: str, prompt: dict, timeout_s: float) -> tuple[float, str]:
    """Queue ``prompt``, wait for it; (seconds, status)."""
    _post_json(f"{url}/free", {"unload_models": True, "free_memory": True})
    time.sleep(1.0)
    t0 = time.perf_counter()
    pid = _post_json(f"{url}/prompt", {"prompt": prompt})["prompt_id"]
    while time.perf_counter() - t0 < timeout_s:
        hist = _request(f"{url}/history/{pid}")
        if hist:
            status = hist[pid]["status"]
            return time.perf_counter() - t0, status.get("status_str", "?")
        time.sleep(0.25)
    return time.perf_counter() - t0, "timeout"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8188", help="the running ComfyUI server")
    ap.add_argument("--size", type=int, default=384, help="LoadViewPair size (longer side of the working images)")
    ap.add_argument("--runs", type=int, default=2, help="runs per workflow")
    ap.add_argument("--workflows", default="two_photos_coarse_video,two_photos_reconstruct")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per run before giving up")
    args = ap.parse_args(argv)
    if not all((DATA / p).is_file() for p in PHOTOS):
        print(f"skipped: fern photos not found in {DATA}")
        return 0
    url = args.url.rstrip("/")
    photos = [upload(url, DATA / p, f"videoscene_bench_fern_{p}") for p in PHOTOS]
    rows = []
    for name in [w for w in args.workflows.split(",") if w]:
        prompt = prepare(json.loads((PROMPTS / f"{name}.api.json").read_text()), photos, args.size)
        for i in range(args.runs):
            sec, status = run(url, prompt, args.timeout)
            print(f"{name} run {i + 1}: {sec:.1f} s ({status})", flush=True)
            rows.append((name, i + 1, sec, status))
    print(f"\n| workflow (fern 0 + 4, size {args.size}, fov auto) | run | seconds | status |\n|---|---|---|---|")
    for name, i, sec, status in rows:
        print(f"| {name} | {i} | {sec:.1f} | {status} |")
    return 0 if all(r[3] == "success" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
