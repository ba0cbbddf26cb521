"""Pure-PyTorch re-implementation of NoPoSplat (cvg/NoPoSplat, ICLR 2025), VideoScene's pose-free coarse prior.

Entry points::

    from vscene_engine.prior.noposplat import load_noposplat, noposplat_prior
    net = load_noposplat("models/noposplat/re10k.ckpt")        # or .safetensors; strict, weights-only read
    res = noposplat_prior(net, img_a, img_b)                     # GaussianScene in camera A's frame + both cameras

Submodules and the official files they correspond to:

* :mod:`.config` -- config/model/encoder/noposplat.yaml, backbone/croco.yaml, experiment/re10k.yaml
* :mod:`.model`  -- encoder_noposplat.py, backbone/backbone_croco.py, backbone/croco/*, heads/dpt_*.py,
  common/gaussian_adapter.py (``UnifiedGaussianAdapter``)
* :mod:`.load`   -- reading the release's Lightning ``.ckpt`` (``encoder.`` prefix) or ``.safetensors``
* :mod:`.prior`  -- input conventions (centre crop, 256/512, normalised intrinsics), PnP for camera B
  (src/misc/cam_utils.py ``get_pnp_pose``), optional photometric refinement (src/evaluation/pose_evaluator.py)

Parameter names equal the official ``EncoderNoPoSplat.state_dict()``. Inference only; no einops / jaxtyping.
"""

from .config import RELEASE_FILES, NoPoSplatConfig
from .load import guess_image_size, load_noposplat, save_noposplat
from .model import NoPoSplatNet, to_gaussian_scene
from .prior import NoPoSplatPoseError, NoPoSplatPrior, noposplat_prior

__all__ = ["NoPoSplatConfig", "NoPoSplatNet", "RELEASE_FILES", "load_noposplat", "save_noposplat",
           "guess_image_size", "to_gaussian_scene", "noposplat_prior", "NoPoSplatPrior", "NoPoSplatPoseError"]
