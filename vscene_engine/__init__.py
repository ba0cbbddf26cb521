"""videoscene engine: pure torch + numpy (no ComfyUI imports). See DESIGN.md for the conventions.

Cameras are OpenCV camera-to-world (+x right, +y down, +z forward), K in pixels, pixel centres at +0.5; images are float
[N,H,W,C] in 0..1; Gaussians carry activated values (linear scales, wxyz quaternions, opacities in 0..1, SH [N,K,3]).

The folders are the pipeline, lowest layer first; a module imports only from its own layer or lower ones
(``tests/test_layers.py``):

1. ``core``: cameras (Cameras), gaussians (GaussianScene), sh (eval_sh), runtime (Progress: the progress/interrupt
   protocol of every long function), distributed (torchrun helpers), atomic (atomic writes)
2. ``io``: camera_formats (load_cameras / save_cameras), ply (read_ply / write_ply), images, video_files,
   checkpoints (read_state_dict: PyTorch's weights-only unpickler)
3. ``render``: rasterize (render), projection (project_gaussians), raster_numba (compiled CPU backend), losses
4. ``views``: pair (make_view_pair -> ViewPair), pose (estimate_relative_pose), trajectories (make_trajectory), da3
5. ``prior``: coarse (coarse_prior), stereo (stereo_depth), depth (depth_prior), mvsplat/, noposplat/
6. ``recon``: fit (fit_scene)
7. ``video``: model (VideoModel), schedule (NoiseSchedule, REFERENCE_TIMESTEP), loading (load_video_model), leap
   (leap_sample / teacher_sample)
8. ``policy``: ddpnet (choose_timestep / train_ddpnet)
9. ``compose``: diffusion2 (ComposedDenoiser, compose_sample), aware3d (VideoMV 3D-aware hook, refine_3d)
10. ``train``: distill (VideoScene Algorithm 1)
11. ``pipeline``: make_path / coarse_video / reconstruct (the two-photo path of the nodes, CLI and demo)
12. ``tools``: cli / demo (``python -m vscene_engine``), replicate, synthetic, tiny_model
"""

__version__ = "0.1.0"
