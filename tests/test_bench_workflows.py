"""The workflow benchmark's API prompts stay in step with the shipped templates."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_workflows as B  # noqa: E402


@pytest.mark.parametrize("name", ["two_photos_coarse_video", "two_photos_reconstruct"])
def test_api_prompt_matches_template(name):
    prompt = json.loads((B.PROMPTS / f"{name}.api.json").read_text())
    template = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
    nodes = {str(n["id"]): n["type"] for n in template["nodes"]}
    # every executed node of the prompt is the template's node of that id and type
    assert {k: v["class_type"] for k, v in prompt.items()}.items() <= nodes.items()
    # and the widget values of our own nodes are the template's (same order as the node's inputs)
    for k, v in prompt.items():
        node = next(n for n in template["nodes"] if str(n["id"]) == k)
        scalars = [x for x in v["inputs"].values() if not isinstance(x, (list, dict))]
        if v["class_type"] in ("LoadViewPair", "CoarseSplatPrior", "SplatReconstruct"):
            assert all(x in node["widgets_values"] for x in scalars), (k, scalars, node["widgets_values"])
    ready = B.prepare(prompt, ["a.png", "b.png"], 320)
    assert [ready[k]["inputs"]["image"] for k in sorted(ready, key=int)
            if ready[k]["class_type"] == "LoadImage"] == ["a.png", "b.png"]
    pair = next(v for v in ready.values() if v["class_type"] == "LoadViewPair")["inputs"]
    assert (pair["size"], pair["fov_deg"], pair["cameras_from"]) == (320, 0, "estimate")
    assert prompt != ready  # prepare copies, the template prompt is untouched
