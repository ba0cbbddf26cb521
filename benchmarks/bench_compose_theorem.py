"""Numbers of the Diffusion² Theorem 3.1 check (tests/test_compose.py), printed: relative Frobenius error of the
sample covariance against the joint for the exact composition (row + col - ind), row-only, column-only and the
released convex form at s = 0.5 / 0.6; 20000 samples of a 3x3 Gaussian grid, Heun 40 steps.

    python benchmarks/bench_compose_theorem.py
"""
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import test_compose as T  # noqa: E402  (the test's exact Gaussian denoisers and grid)

from vscene_engine.compose.diffusion2 import WeightSchedule  # noqa: E402


def main() -> int:
    n = 20000
    noise = torch.randn(T.V3, T.F3, n, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def cov_err(samples):
        flat = samples[..., 0, 0].reshape(9, n)
        return T._rel(torch.cov(flat), T.JOINT), float((flat.mean(1) - T.MEAN.reshape(-1)).norm() / T.MEAN.norm())

    W = WeightSchedule
    rows = {"exact (row + col - ind)": dict(ind_fn=T._ind_x0), "video model only (s = 0)": dict(weights=W(s0=0.0)),
            "multi-view model only (s = 1)": dict(weights=W(s0=1.0)),
            "released convex form, s = 0.5": dict(weights=W(s0=0.5)),
            "released convex form, s = 0.6": dict(weights=W(s0=0.6))}
    for name, kw in rows.items():
        c, m = cov_err(T._gauss_sample(noise, sampler="heun", steps=40, **kw))
        print(f"{name:32s} covariance error {100 * c:6.1f} %   mean error {100 * m:5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
