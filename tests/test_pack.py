"""The pack as ComfyUI loads it: a package from its folder, relative imports, classic node protocol, no host."""
import importlib.util
import json
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_pack(name="videoscene_pack_under_test"):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_pack_exposes_classic_nodes_with_tooltips():
    pack = load_pack()
    assert pack.NODE_CLASS_MAPPINGS and set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    for key, cls in pack.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        assert isinstance(cls.RETURN_TYPES, tuple) and callable(getattr(cls, cls.FUNCTION))
        for section in ("required", "optional"):
            for name, entry in spec.get(section, {}).items():
                assert len(entry) == 2 and entry[1].get("tooltip"), f"{key}.{name} has no tooltip"


def test_pack_does_not_claim_top_level_nodes_module():
    load_pack()
    mod = sys.modules.get("nodes")
    assert mod is None or Path(getattr(mod, "__file__", "") or "").resolve().parent != ROOT / "nodes"


def test_packaging_metadata():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "videoscene" and "comfyui" not in meta["project"]["name"].lower()
    # every engine subpackage is found automatically; never `nodes` (ComfyUI's), tests or benchmarks
    find = meta["tool"]["setuptools"]["packages"]["find"]
    assert find["include"] == ["vscene_engine", "vscene_engine.*"] and find.get("namespaces") is False
    assert meta["tool"]["comfy"]["requires-comfyui"] == ">=0.24.0"
    deps = meta["project"]["dependencies"] + (ROOT / "requirements.txt").read_text().splitlines()
    for d in deps:
        name = d.split("#")[0].strip().split(">")[0].split("=")[0].split("<")[0].strip().lower()
        assert name not in ("torch", "torchvision", "torchaudio"), d


# Third-party modules the pack may import without listing them: the host and its modules, and optional extras whose
# import is guarded (gsplat: CUDA fast path chosen by a guarded first call; transformers: only for a T5 text encoder).
_HOST_OR_OPTIONAL = {"torch", "comfy", "comfy_api", "folder_paths", "gsplat", "transformers"}
# import name -> distribution name in requirements.txt
_DIST = {"PIL": "pillow", "cv2": "opencv-python-headless"}


def _requirement_names(path: Path) -> set:
    out = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            out.add(line.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower())
    return out


def test_every_runtime_import_is_a_listed_requirement():
    """What the engine and nodes import must be installed by requirements.txt and pyproject (the demo on a fresh
    machine installs only requirements.txt), not only by the dev/test extras."""
    import ast

    found = {}
    files = [*(ROOT / "vscene_engine").rglob("*.py"), *(ROOT / "nodes").rglob("*.py"), ROOT / "__init__.py"]
    for f in files:
        for n in ast.walk(ast.parse(f.read_text())):
            mods = [a.name for a in n.names] if isinstance(n, ast.Import) else (
                [n.module] if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module else [])
            for m in mods:
                found.setdefault(m.split(".")[0], str(f.relative_to(ROOT)))
    third = {m: f for m, f in found.items()
             if m not in sys.stdlib_module_names and m != "vscene_engine" and m not in _HOST_OR_OPTIONAL}
    req = _requirement_names(ROOT / "requirements.txt")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in meta["project"]["dependencies"]}
    for m, f in sorted(third.items()):
        dist = _DIST.get(m, m).lower()
        assert dist in req, f"{f} imports {m!r} but requirements.txt does not list {dist}"
        assert dist in deps, f"{f} imports {m!r} but pyproject's dependencies do not list {dist}"


def test_render_node_matches_engine_and_accepts_formats(tmp_path):
    from vscene_engine.io.camera_formats import to_nerf, to_vscene
    from vscene_engine.render.rasterize import render
    from vscene_engine.tools.synthetic import demo_cameras, procedural_scene

    pack = load_pack()
    host = sys.modules[pack.__name__ + ".nodes.host"]
    node = pack.NODE_CLASS_MAPPINGS["VSceneRenderSplat"]()
    scene = procedural_scene(3000, seed=1)
    cams = demo_cameras(64, 48)
    splat = host.scene_to_splat(scene)
    text = json.dumps(to_vscene(cams))
    rgb, alpha, depth = node.render(splat, text, 512, 512, 0, "#ffffff", "torch")
    ref = render(scene, cams, background=(1.0, 1.0, 1.0))
    assert rgb.shape == (2, 48, 64, 3) and alpha.shape == (2, 48, 64) and depth.shape == (2, 48, 64, 3)
    assert float((rgb - ref.rgb.clamp(0, 1)).abs().max()) < 1e-5
    # transforms.json text + max_size
    rgb2, _, _ = node.render(splat, json.dumps(to_nerf(cams)), 512, 512, 32, "1,1,1", "auto")
    assert rgb2.shape == (2, 24, 32, 3)
    with pytest.raises(ValueError, match="colour"):
        node.render(splat, text, 512, 512, 0, "blue-ish", "torch")
    with pytest.raises(ValueError, match="JSON"):
        node.render(splat, "{not json", 512, 512, 0, "#000000", "torch")
    with pytest.raises(ValueError, match="no cameras"):
        node.render(splat, "  ", 512, 512, 0, "#000000", "torch")


# ------------------------------------------------------------------------------------------------ the built wheel

def _wheel_backend_problem() -> str | None:
    """Why this environment cannot build the wheel offline (None: it can). setuptools >= 70.1 builds wheels itself;
    older ones (>= 64, the build-system requirement) need the `wheel` package."""
    try:
        import setuptools
    except ImportError:
        return "setuptools is not installed (pip install -r requirements-dev.txt)"
    ver = tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit())
    if ver >= (70, 1):
        return None
    if ver < (64,):
        return f"setuptools {setuptools.__version__} < 64 (pip install -r requirements-dev.txt)"
    if importlib.util.find_spec("wheel") is None:
        return (f"setuptools {setuptools.__version__} needs the `wheel` package to build wheels "
                "(pip install -r requirements-dev.txt installs setuptools>=70.1)")
    return None


def test_wheel_ships_every_engine_module_and_no_top_level_nodes(tmp_path):
    """Build the wheel as `pip wheel .` does (offline: the installed setuptools, no build isolation) from a copy of the
    tree, then check its contents: every vscene_engine/**/*.py and data file of the tree is in it, nothing else is a
    top-level package (no `nodes`: ComfyUI owns that name; no tests/benchmarks), no torch dependency, and the
    subpackages import from the wheel alone."""
    import shutil
    import subprocess
    import zipfile

    problem = _wheel_backend_problem()
    if problem:
        pytest.skip(f"cannot build the wheel offline here: {problem}")
    src = tmp_path / "src"
    # a copy, so the build's build/ and *.egg-info never land in (or race on) the working tree
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache", ".benchmarks", "out",
        "demo_out", "bench_out", ".venv"))
    dist = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(dist)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    wheels = list(dist.glob("videoscene-*.whl"))
    assert len(wheels) == 1, [p.name for p in dist.iterdir()]
    names = set(zipfile.ZipFile(wheels[0]).namelist())

    engine = src / "vscene_engine"
    want = {p.relative_to(src).as_posix() for p in engine.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert any(w.startswith("vscene_engine/prior/mvsplat/") for w in want)  # the subpackage the old config dropped
    missing = sorted(want - names)
    assert not missing, (f"the wheel lacks {len(missing)} engine files, e.g. {missing[:8]} (a subpackage without "
                         "__init__.py, or a data file type not in [tool.setuptools.package-data])")
    top = {n.split("/")[0] for n in names}
    info = {t for t in top if t.endswith(".dist-info")}
    assert top - info == {"vscene_engine"}, f"unexpected top-level entries in the wheel: {sorted(top - info)}"
    assert not any(n.startswith("nodes/") for n in names)
    extra = sorted(n for n in names if n.startswith("vscene_engine/") and n not in want)
    assert not extra, f"files in the wheel that are not in the tree: {extra[:8]}"
    meta = zipfile.ZipFile(wheels[0]).read(f"{sorted(info)[0]}/METADATA").decode()
    requires = [line.split(":", 1)[1].strip().lower() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert requires and not any(r.split()[0].split(">")[0].split("=")[0] in ("torch", "torchvision", "torchaudio")
                                for r in requires), requires

    # every (sub)package imports from the unpacked wheel alone (a pure-python wheel unpacks to site-packages as is)
    site = tmp_path / "site"
    zipfile.ZipFile(wheels[0]).extractall(site)
    pkgs = sorted(p.parent.relative_to(site).as_posix().replace("/", ".") for p in
                  (site / "vscene_engine").rglob("__init__.py"))
    code = ("import importlib, sys; sys.path.insert(0, sys.argv[1]); "
            "mods = [importlib.import_module(m) for m in sys.argv[2:]]; "
            "bad = [m.__name__ for m in mods if not m.__file__.startswith(sys.argv[1])]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code, str(site), *pkgs], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, f"importing {pkgs} from the wheel failed:\n{proc.stderr[-3000:]}"
