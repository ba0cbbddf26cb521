"""Batched pinhole cameras in the engine convention.

Entry point: the :class:`Cameras` dataclass.

Conventions (binding, see DESIGN.md):

* ``c2w [N,4,4]`` is OpenCV **camera-to-world**: the columns of ``c2w[:, :3, :3]`` are the camera axes in world
  coordinates, ``+x`` right, ``+y`` down, ``+z`` forward (the viewing direction); ``c2w[:, :3, 3]`` is the camera
  centre. The last row is ``[0, 0, 0, 1]``.
* ``K [N,3,3]`` is in **pixels** for an image of ``width x height``: ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]``
  (skew ``s`` is normally 0). Image coordinates are continuous, the top-left image *corner* is ``(0, 0)`` and the
  centre of pixel (column ``i``, row ``j``) is ``(i + 0.5, j + 0.5)``; a centred principal point is therefore
  ``(width / 2, height / 2)``.
* Normalized intrinsics: row 0 of K divided by ``width``, row 1 by ``height``.
* ``width``/``height`` are plain ints shared by the whole batch; ``near``/``far`` ``[N]`` are positive depths
  (``0 < near < far``) along the camera ``+z`` axis.

Besides the class, this module has small helpers used by the format converters and trajectories:
:func:`look_at`, :func:`fov_to_focal`, :func:`focal_to_fov`, :func:`quat_to_rotmat`, :func:`rotmat_to_quat`.
Everything is plain torch and works in float32 and float64 on any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from .gaussians import quat_to_rotmat, rotmat_to_quat  # noqa: F401  (re-exported)

__all__ = [
    "Cameras",
    "CropBox",
    "look_at",
    "fov_to_focal",
    "focal_to_fov",
    "quat_to_rotmat",
    "rotmat_to_quat",
    "intrinsics_matrix",
]

# Extra relative slack of the orthonormality test in validate(), per dtype.
_ORTHO_TOL = {torch.float64: 1e-6, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}


class CropBox(NamedTuple):
    """A region of the *source* image, in source pixels: columns ``[x0, x0 + width)``, rows ``[y0, y0 + height)``.

    Returned by :meth:`Cameras.fit`. The output image shows exactly this region resized to the target size.
    Parts of the box outside the source image (negative ``x0``/``y0`` or ``x0 + width > source width`` ...) are
    padding.
    """

    x0: int
    y0: int
    width: int
    height: int


def _as_float_tensor(x, like: Tensor | None = None, name: str = "value") -> Tensor:
    if isinstance(x, Tensor):
        t = x
    else:
        t = torch.as_tensor(x)
    if not t.is_floating_point():
        t = t.to(like.dtype if like is not None else torch.get_default_dtype())
    if like is not None:
        t = t.to(device=like.device, dtype=like.dtype)
    return t


@dataclass(eq=False)
class Cameras:
    """A batch of ``N`` pinhole cameras sharing one image size.

    Fields:
        c2w:    ``[N,4,4]`` OpenCV camera-to-world (x right, y down, z forward). ``[4,4]`` and ``[N,3,4]`` inputs are
                promoted to ``[N,4,4]``.
        K:      ``[N,3,3]`` intrinsics in pixels for ``width x height`` images (pixel centres at +0.5).
                ``[3,3]`` is broadcast to the batch.
        width:  image width in pixels (int, shared by the batch).
        height: image height in pixels (int, shared by the batch).
        near:   ``[N]`` near depth (> 0). A Python float is broadcast.
        far:    ``[N]`` far depth (> near). A Python float is broadcast.
        names:  optional list of ``N`` names (e.g. image file stems).

    ``K``, ``near`` and ``far`` are converted to the dtype/device of ``c2w``. Construction only checks shapes;
    call :meth:`validate` for the numerical checks (finite values, rigid rotations, positive focal lengths ...).
    """

    c2w: Tensor
    K: Tensor
    width: int
    height: int
    near: Tensor
    far: Tensor
    names: list[str] | None = None

    # ------------------------------------------------------------------ construction
    def __post_init__(self) -> None:
        c2w = _as_float_tensor(self.c2w, name="c2w")
        if c2w.ndim == 2:
            c2w = c2w[None]
        if c2w.ndim != 3 or c2w.shape[-2:] not in ((4, 4), (3, 4)):
            raise ValueError(f"Cameras.c2w must have shape [N,4,4] (or [N,3,4]); got {tuple(c2w.shape)}")
        if c2w.shape[-2] == 3:
            bottom = torch.zeros(c2w.shape[0], 1, 4, dtype=c2w.dtype, device=c2w.device)
            bottom[..., 3] = 1
            c2w = torch.cat([c2w, bottom], dim=-2)
        n = c2w.shape[0]
        K = _as_float_tensor(self.K, like=c2w)
        if K.ndim == 2:
            K = K[None].expand(n, 3, 3).clone()
        if K.shape != (n, 3, 3):
            raise ValueError(f"Cameras.K must have shape [N,3,3] with N={n} (the batch size of c2w); got {tuple(K.shape)}")
        near = _as_float_tensor(self.near, like=c2w)
        far = _as_float_tensor(self.far, like=c2w)
        if near.ndim == 0:
            near = near.expand(n).clone()
        if far.ndim == 0:
            far = far.expand(n).clone()
        near, far = near.reshape(-1), far.reshape(-1)
        if near.shape != (n,) or far.shape != (n,):
            raise ValueError(
                f"Cameras.near/far must have shape [N] with N={n}; got {tuple(near.shape)} and {tuple(far.shape)}"
            )
        try:
            width, height = int(self.width), int(self.height)
        except (TypeError, ValueError):
            raise ValueError(f"Cameras.width/height must be ints; got {self.width!r} x {self.height!r}") from None
        if width != self.width or height != self.height:
            raise ValueError(f"Cameras.width/height must be whole numbers; got {self.width!r} x {self.height!r}")
        names = self.names
        if names is not None:
            names = [str(s) for s in names]
            if len(names) != n:
                raise ValueError(f"Cameras.names has {len(names)} entries but there are {n} cameras")
        self.c2w, self.K, self.near, self.far = c2w, K, near, far
        self.width, self.height, self.names = width, height, names

    @classmethod
    def from_normalized(
        cls,
        c2w: Tensor,
        Kn: Tensor,
        width: int,
        height: int,
        near,
        far,
        names: list[str] | None = None,
    ) -> "Cameras":
        """Build cameras from **normalized** intrinsics ``Kn [N,3,3]`` (row 0 in units of ``width``, row 1 of
        ``height``; e.g. ``cx = 0.5`` is the image centre). Pixel K = ``diag(width, height, 1) @ Kn``."""
        c2w = _as_float_tensor(c2w)
        Kn = _as_float_tensor(Kn, like=c2w)
        scale = torch.tensor([float(width), float(height), 1.0], dtype=Kn.dtype, device=Kn.device)
        K = Kn * scale[:, None]
        return cls(c2w, K, width, height, near, far, names)

    @classmethod
    def cat(cls, cams: Sequence["Cameras"]) -> "Cameras":
        """Concatenate camera batches along N. All must share ``width``/``height`` (use :meth:`resized` or
        :meth:`fit` first). The result has the dtype/device of the first. Names: kept if any batch has names,
        missing ones are filled with their index in the result."""
        cams = list(cams)
        if not cams:
            raise ValueError("Cameras.cat needs at least one Cameras batch")
        w, h = cams[0].width, cams[0].height
        for i, c in enumerate(cams):
            if (c.width, c.height) != (w, h):
                raise ValueError(
                    f"Cameras.cat: batch {i} is {c.width}x{c.height} but batch 0 is {w}x{h}; "
                    f"bring them to one size first with .resized(w, h) or .fit(w, h)"
                )
        ref = cams[0].c2w
        c2w = torch.cat([c.c2w.to(ref) for c in cams])
        K = torch.cat([c.K.to(ref) for c in cams])
        near = torch.cat([c.near.to(ref) for c in cams])
        far = torch.cat([c.far.to(ref) for c in cams])
        names = None
        if any(c.names is not None for c in cams):
            names, k = [], 0
            for c in cams:
                names.extend(c.names if c.names is not None else [str(k + i) for i in range(len(c))])
                k += len(c)
        return cls(c2w, K, w, h, near, far, names)

    # ------------------------------------------------------------------ container protocol
    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, index) -> "Cameras":
        """Select cameras; always returns a batch (an int gives N=1). ``index``: int, slice, list of ints or bools,
        or a long / bool tensor."""
        n = len(self)
        if isinstance(index, bool):
            raise TypeError("Cameras index must be an int, slice, list or tensor, not bool")
        if isinstance(index, int):
            if not -n <= index < n:
                raise IndexError(f"camera index {index} out of range for {n} cameras")
            idx = torch.tensor([index % n], dtype=torch.long)
        elif isinstance(index, slice):
            idx = torch.arange(n)[index]
        else:
            if isinstance(index, (list, tuple)) and len(index) == 0:
                index = torch.zeros(0, dtype=torch.long)
            idx = torch.as_tensor(index)
            if idx.dtype == torch.bool:
                if idx.shape != (n,):
                    raise IndexError(f"boolean camera mask must have shape [{n}], got {tuple(idx.shape)}")
                idx = torch.nonzero(idx, as_tuple=False).reshape(-1)
            elif idx.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
                idx = idx.reshape(-1).long()
                if idx.numel() and (idx.min() < -n or idx.max() >= n):
                    raise IndexError(f"camera index out of range for {n} cameras: {idx.tolist()}")
                idx = idx % n if n else idx
            else:
                raise TypeError(f"Cameras index must be int/slice/list/long or bool tensor, got {idx.dtype}")
        idx = idx.cpu()
        dev_idx = idx.to(self.c2w.device)
        names = [self.names[i] for i in idx.tolist()] if self.names is not None else None
        return Cameras(
            self.c2w[dev_idx], self.K[dev_idx], self.width, self.height, self.near[dev_idx], self.far[dev_idx], names
        )

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Cameras":
        """Move/cast the tensors (``dtype`` must be a floating dtype)."""
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"Cameras.to: dtype must be floating point, got {dtype}")
        f = lambda t: t.to(device=device if device is not None else t.device, dtype=dtype or t.dtype)
        return Cameras(f(self.c2w), f(self.K), self.width, self.height, f(self.near), f(self.far),
                       None if self.names is None else list(self.names))

    def clone(self) -> "Cameras":
        return Cameras(self.c2w.clone(), self.K.clone(), self.width, self.height, self.near.clone(),
                       self.far.clone(), None if self.names is None else list(self.names))

    @property
    def dtype(self) -> torch.dtype:
        return self.c2w.dtype

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    # ------------------------------------------------------------------ derived quantities
    @property
    def R(self) -> Tensor:
        """``[N,3,3]`` camera-to-world rotation (columns: camera right, down, forward in world coordinates)."""
        return self.c2w[:, :3, :3]

    @property
    def w2c(self) -> Tensor:
        """``[N,4,4]`` world-to-camera (OpenCV) = inverse of ``c2w``, computed as ``[R^T | -R^T t]`` (assumes a rigid
        ``c2w``; see :meth:`validate`)."""
        R = self.c2w[:, :3, :3]
        t = self.c2w[:, :3, 3:]
        Rt = R.transpose(-1, -2)
        out = torch.zeros_like(self.c2w)
        out[:, :3, :3] = Rt
        out[:, :3, 3:] = -Rt @ t
        out[:, 3, 3] = 1
        return out

    @property
    def centers(self) -> Tensor:
        """``[N,3]`` camera centres in world coordinates."""
        return self.c2w[:, :3, 3]

    @property
    def forward(self) -> Tensor:
        """``[N,3]`` unit viewing directions (camera +z) in world coordinates."""
        return self.c2w[:, :3, 2]

    @property
    def K_normalized(self) -> Tensor:
        """``[N,3,3]`` intrinsics with row 0 divided by ``width`` and row 1 by ``height``."""
        scale = torch.tensor([1.0 / self.width, 1.0 / self.height, 1.0], dtype=self.K.dtype, device=self.K.device)
        return self.K * scale[:, None]

    @property
    def fov_x(self) -> Tensor:
        """``[N]`` horizontal field of view in radians (``2 atan(width / (2 fx))``, centred principal point)."""
        return 2 * torch.atan(self.width / (2 * self.K[:, 0, 0]))

    @property
    def fov_y(self) -> Tensor:
        """``[N]`` vertical field of view in radians (``2 atan(height / (2 fy))``, centred principal point)."""
        return 2 * torch.atan(self.height / (2 * self.K[:, 1, 1]))

    # ------------------------------------------------------------------ image-space edits
    def resized(self, width: int, height: int) -> "Cameras":
        """Cameras for the same views rendered at ``width x height``.

        Row 0 of K (fx, skew, cx) is scaled by ``sx = width / self.width`` and row 1 (fy, cy) by
        ``sy = height / self.height``. With continuous pixel coordinates (corner at 0, pixel centres at +0.5) a
        pixel position ``u`` maps to ``u * sx`` exactly, so this matches any image resize that maps the image
        corners to the image corners (e.g. ``F.interpolate(..., align_corners=False)``, PIL ``resize``).
        The aspect ratio may change (non-uniform scale); see :meth:`fit` to keep it.
        """
        width, height = int(width), int(height)
        if width <= 0 or height <= 0:
            raise ValueError(f"resized: target size must be positive, got {width}x{height}")
        sx, sy = width / self.width, height / self.height
        scale = torch.tensor([sx, sy, 1.0], dtype=self.K.dtype, device=self.K.device)
        return Cameras(self.c2w.clone(), self.K * scale[:, None], width, height, self.near.clone(),
                       self.far.clone(), None if self.names is None else list(self.names))

    def cropped(self, x0: int, y0: int, width: int, height: int) -> "Cameras":
        """Cameras for the sub-image ``image[y0:y0+height, x0:x0+width]`` (rows, columns in pixels).

        Shifts the principal point: ``cx -= x0``, ``cy -= y0``; focal lengths are unchanged. The box may extend
        past the image (negative ``x0``/``y0`` or beyond the right/bottom edge): that is padding.
        """
        width, height = int(width), int(height)
        if width <= 0 or height <= 0:
            raise ValueError(f"cropped: crop size must be positive, got {width}x{height}")
        K = self.K.clone()
        # The skew term does not change: u' = u - x0 only shifts the principal point.
        K[:, 0, 2] -= x0
        K[:, 1, 2] -= y0
        return Cameras(self.c2w.clone(), K, width, height, self.near.clone(), self.far.clone(),
                       None if self.names is None else list(self.names))

    def fit(self, width: int, height: int, mode: str = "crop") -> tuple["Cameras", CropBox]:
        """Bring the cameras to a ``width x height`` output with a resize policy; return ``(cameras, box)``.

        ``mode``:
            * ``"crop"``: centre-crop the source to the target aspect ratio, then resize (no distortion, loses a
              border). ``box`` lies inside the source image.
            * ``"pad"``: pad the source symmetrically to the target aspect ratio (letterbox), then resize. ``box``
              extends past the source image; ``-box.x0`` / ``-box.y0`` columns/rows of padding are on the left/top.
            * ``"stretch"``: resize directly (aspect ratio changes); ``box = (0, 0, self.width, self.height)``.

        ``box`` is a :class:`CropBox` ``(x0, y0, w, h)`` of integers in *source* pixels. Image code reproduces the
        same view by taking source region ``[y0:y0+h, x0:x0+w]`` (zero/colour padding where outside the source)
        and resizing it to ``width x height`` (corner-aligned resize, e.g. ``align_corners=False``). The returned
        cameras equal ``self.cropped(*box).resized(width, height)``.
        """
        width, height = int(width), int(height)
        if width <= 0 or height <= 0:
            raise ValueError(f"fit: target size must be positive, got {width}x{height}")
        W, H = self.width, self.height
        if mode == "stretch":
            box = CropBox(0, 0, W, H)
        elif mode in ("crop", "pad"):
            target_aspect = width / height
            src_aspect = W / H
            wider = src_aspect > target_aspect
            if mode == "crop":
                if wider:  # too wide: keep full height, crop columns
                    bw = max(1, min(W, round(H * target_aspect)))
                    box = CropBox((W - bw) // 2, 0, bw, H)
                else:
                    bh = max(1, min(H, round(W / target_aspect)))
                    box = CropBox(0, (H - bh) // 2, W, bh)
            else:
                if wider:  # too wide: keep full width, pad rows
                    bh = max(H, round(W / target_aspect))
                    box = CropBox(0, -((bh - H) // 2), W, bh)
                else:
                    bw = max(W, round(H * target_aspect))
                    box = CropBox(-((bw - W) // 2), 0, bw, H)
        else:
            raise ValueError(f"fit: unknown mode {mode!r}; use 'crop', 'pad' or 'stretch'")
        return self.cropped(*box).resized(width, height), box

    # ------------------------------------------------------------------ geometry
    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Project world points into every camera.

        Args:
            points: ``[P,3]`` world coordinates.
        Returns:
            ``uv [N,P,2]`` pixel coordinates (x right, y down; pixel centres at +0.5) and ``depth [N,P]`` = camera
            ``z``. Points with ``depth <= 0`` are behind the camera: their ``uv`` is meaningless (may be inf/nan).
        """
        pts = _as_float_tensor(points, like=self.c2w)
        if pts.ndim != 2 or pts.shape[-1] != 3:
            raise ValueError(f"project: points must have shape [P,3], got {tuple(pts.shape)}")
        R = self.c2w[:, :3, :3]
        t = self.c2w[:, :3, 3]
        cam = (pts[None] - t[:, None]) @ R  # [N,P,3] = R^T (X - t)
        depth = cam[..., 2]
        pix = cam @ self.K.transpose(-1, -2)  # [N,P,3]
        uv = pix[..., :2] / depth[..., None]
        return uv, depth

    def unproject(self, uv: Tensor, depth: Tensor) -> Tensor:
        """Inverse of :meth:`project`: ``uv [N,P,2]`` pixels and ``depth [N,P]`` (camera z) -> world points
        ``[N,P,3]``."""
        uv = _as_float_tensor(uv, like=self.c2w)
        depth = _as_float_tensor(depth, like=self.c2w)
        ones = torch.ones_like(uv[..., :1])
        pix = torch.cat([uv, ones], dim=-1)  # [N,P,3]
        rays = pix @ torch.linalg.inv(self.K).transpose(-1, -2)  # camera coords with z = 1
        cam = rays * depth[..., None]
        return cam @ self.c2w[:, :3, :3].transpose(-1, -2) + self.c2w[:, None, :3, 3]

    # ------------------------------------------------------------------ checks
    def validate(self) -> "Cameras":
        """Check the cameras numerically; raise ``ValueError`` naming the offending cameras and a fix.

        Checks: finite values; c2w bottom row ``[0,0,0,1]``; rotation orthonormal (``R^T R = I``) and
        ``det R = +1`` (not a reflection); K upper-triangular with ``K[2] = [0,0,1]``; ``fx, fy > 0``;
        ``width, height > 0``; ``0 < near < far``. Returns ``self`` so it can be chained.
        """
        n = len(self)

        def where(mask: Tensor) -> str:
            bad = torch.nonzero(mask.reshape(n, -1).any(-1), as_tuple=False).reshape(-1).tolist()
            shown = bad[:8]
            names = ""
            if self.names is not None:
                names = " (" + ", ".join(repr(self.names[i]) for i in shown) + ")"
            more = f" and {len(bad) - len(shown)} more" if len(bad) > len(shown) else ""
            return f"camera(s) {shown}{more}{names}"

        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"Cameras: image size must be positive, got width={self.width}, height={self.height}")
        for label, t in (("c2w", self.c2w), ("K", self.K), ("near", self.near), ("far", self.far)):
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                raise ValueError(
                    f"Cameras.{label} contains NaN/inf at {where(~finite)}; check the source poses/intrinsics "
                    f"(e.g. a division by a zero focal length or a degenerate look-at)"
                )
        if n == 0:
            return self
        bottom = self.c2w[:, 3, :]
        expect = torch.tensor([0, 0, 0, 1], dtype=self.dtype, device=self.device)
        bad = (bottom - expect).abs() > 1e-6
        if bool(bad.any()):
            raise ValueError(f"Cameras.c2w last row must be [0,0,0,1]; not so for {where(bad)}")
        R = self.c2w[:, :3, :3]
        eye = torch.eye(3, dtype=R.dtype, device=R.device)
        err = (R.transpose(-1, -2) @ R - eye).abs().amax(dim=(-1, -2))
        tol = _ORTHO_TOL.get(R.dtype, 1e-4)
        if bool((err > tol).any()):
            raise ValueError(
                f"Cameras.c2w rotation is not orthonormal for {where(err > tol)} (max |R^T R - I| = "
                f"{float(err.max()):.3g}); c2w must be rigid (no scale/shear): orthonormalize it "
                f"(e.g. SVD: U V^T) or put any scene scale into the translation instead"
            )
        det = torch.linalg.det(R)
        if bool((det < 0).any()):
            raise ValueError(
                f"Cameras.c2w rotation has det < 0 (a reflection) for {where(det < 0)}; the axes are mirrored. "
                f"If these are OpenGL/Blender poses (y up, looking down -z) convert them to OpenCV by negating "
                f"the y and z columns: c2w[:, :3, 1:3] *= -1"
            )
        K = self.K
        bad_k = (K[:, 2, :] - torch.tensor([0, 0, 1], dtype=K.dtype, device=K.device)).abs().amax(-1) > 1e-6
        bad_k = bad_k | (K[:, 1, 0].abs() > 1e-6)
        if bool(bad_k.any()):
            raise ValueError(
                f"Cameras.K must be [[fx,s,cx],[0,fy,cy],[0,0,1]]; not so for {where(bad_k)}. "
                f"If you have normalized intrinsics use Cameras.from_normalized(...)"
            )
        fpos = (K[:, 0, 0] > 0) & (K[:, 1, 1] > 0)
        if not bool(fpos.all()):
            raise ValueError(
                f"Cameras.K focal lengths fx, fy must be > 0; not so for {where(~fpos)} "
                f"(fx={K[~fpos, 0, 0].tolist()[:4]}, fy={K[~fpos, 1, 1].tolist()[:4]}). A negative focal length "
                f"usually means a flipped image axis: flip the matching camera axis in c2w instead"
            )
        if bool((self.near <= 0).any()):
            raise ValueError(
                f"Cameras.near must be > 0; not so for {where(self.near <= 0)} (near={self.near[self.near <= 0].tolist()[:4]}). "
                f"Pass a small positive near, e.g. load_cameras(..., near=0.01)"
            )
        if bool((self.near >= self.far).any()):
            m = self.near >= self.far
            raise ValueError(
                f"Cameras.near must be < far; not so for {where(m)} (near={self.near[m].tolist()[:4]}, "
                f"far={self.far[m].tolist()[:4]}). Pass explicit bounds, e.g. load_cameras(..., near=0.1, far=100)"
            )
        return self

    def __repr__(self) -> str:
        names = "" if self.names is None else f", names={self.names[:3]}{'...' if len(self.names) > 3 else ''}"
        return (f"Cameras(N={len(self)}, {self.width}x{self.height}, dtype={self.dtype}, "
                f"device={self.device}{names})")


# ---------------------------------------------------------------------- helpers
def intrinsics_matrix(fx, fy, cx, cy, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """Pixel intrinsics from (broadcastable) ``fx, fy, cx, cy``; returns ``[..., 3, 3]``."""
    fx, fy, cx, cy = (torch.as_tensor(v, dtype=dtype, device=device) for v in (fx, fy, cx, cy))
    fx, fy, cx, cy = torch.broadcast_tensors(fx, fy, cx, cy)
    K = torch.zeros(*fx.shape, 3, 3, dtype=dtype, device=device)
    K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2], K[..., 2, 2] = fx, fy, cx, cy, 1
    return K


def fov_to_focal(fov_rad, size):
    """Focal length in pixels for a full field of view ``fov_rad`` (radians) spanning ``size`` pixels:
    ``size / (2 tan(fov / 2))``. Works on floats and tensors."""
    if isinstance(fov_rad, Tensor):
        return size / (2 * torch.tan(fov_rad / 2))
    return size / (2 * math.tan(fov_rad / 2))


def focal_to_fov(focal, size):
    """Full field of view in radians for a focal length in pixels over ``size`` pixels: ``2 atan(size / 2f)``."""
    if isinstance(focal, Tensor):
        return 2 * torch.atan(size / (2 * focal))
    return 2 * math.atan(size / (2 * focal))


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """OpenCV camera-to-world matrices looking from ``eye`` towards ``target``.

    Args:
        eye, target: ``[...,3]`` world points.
        up: ``[...,3]`` world "up" direction (the image top points towards it); default ``(0, -1, 0)`` i.e. world
            ``-y`` is up, matching OpenCV/COLMAP-style worlds. If ``up`` is parallel to the view direction a
            perpendicular fallback is used.
    Returns:
        ``[...,4,4]`` c2w with columns right (x), down (y), forward (z), centre.
    """
    eye = _as_float_tensor(eye)
    target = _as_float_tensor(target, like=eye)
    if up is None:
        up = torch.tensor([0.0, -1.0, 0.0], dtype=eye.dtype, device=eye.device)
    up = _as_float_tensor(up, like=eye)
    eye, target, up = torch.broadcast_tensors(eye, target, up)
    fwd = target - eye
    fwd = fwd / fwd.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    right = torch.linalg.cross(fwd, up)  # x = y cross z = (-up) cross fwd = fwd cross up
    rn = right.norm(dim=-1, keepdim=True)
    degenerate = rn[..., 0] < 1e-8
    if bool(degenerate.any()):
        alt = torch.tensor([1.0, 0.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(fwd)
        alt2 = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device).expand_as(fwd)
        alt = torch.where((fwd * alt).sum(-1, keepdim=True).abs() > 0.9, alt2, alt)
        right_alt = torch.linalg.cross(fwd, alt)
        right = torch.where(degenerate[..., None], right_alt, right)
        rn = right.norm(dim=-1, keepdim=True)
    right = right / rn.clamp_min(1e-12)
    down = torch.linalg.cross(fwd, right)  # y = z cross x
    c2w = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[..., :3, 0] = right
    c2w[..., :3, 1] = down
    c2w[..., :3, 2] = fwd
    c2w[..., :3, 3] = eye
    c2w[..., 3, 3] = 1
    return c2w
