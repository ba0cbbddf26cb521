"""Pure-PyTorch re-implementation of the MVSplat encoder (donydchen/mvsplat, ``EncoderCostVolume``).

Entry points::

    from vscene_engine.prior.mvsplat import MVSplatConfig, MVSplatEncoder, load_mvsplat, to_gaussian_scene
    enc = load_mvsplat("mvsplat_re10k.safetensors")          # or a Lightning .ckpt
    out = enc(images, extrinsics, intrinsics, near, far)      # see MVSplatEncoder.forward
    scene = to_gaussian_scene(out, b=0)                       # vscene_engine.core.gaussians.GaussianScene

Submodules and the official files they correspond to:

* :mod:`.config`   -- ``EncoderCostVolumeCfg`` (config/model/encoder/costvolume.yaml, config/experiment/re10k.yaml)
* :mod:`.backbone` -- backbone/backbone_multiview.py, backbone/multiview_transformer.py, backbone/unimatch/*
* :mod:`.unet`     -- costvolume/ldm_unet/unet.py (+ util.py normalization)
* :mod:`.depth`    -- costvolume/depth_predictor_multiview.py
* :mod:`.adapter`  -- common/gaussian_adapter.py, common/gaussians.py, src/geometry/projection.py
* :mod:`.wigner`   -- src/misc/sh_rotation.py with e3nn's ``matrix_to_angles`` / ``wigner_D`` (no e3nn needed)
* :mod:`.encoder`  -- encoder_costvolume.py

Parameter names equal the official ``EncoderCostVolume.state_dict()`` (the Lightning checkpoint adds ``encoder.``).
Inference only, deterministic, no einops/e3nn dependency.
"""

from .config import MVSplatConfig
from .encoder import MVSplatEncoder, load_mvsplat, to_gaussian_scene

__all__ = ["MVSplatConfig", "MVSplatEncoder", "load_mvsplat", "to_gaussian_scene"]
