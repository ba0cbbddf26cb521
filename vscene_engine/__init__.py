"""videoscene engine: pure torch + numpy (no ComfyUI imports). See DESIGN.md for the conventions.

Cameras are OpenCV camera-to-world (+x right, +y down, +z forward), K in pixels, pixel centres at +0.5; images are float
[N,H,W,C] in 0..1; Gaussians carry activated values (linear scales, wxyz quaternions, opacities in 0..1, SH [N,K,3]).

Modules (one entry point each): runtime (Progress: the progress/interrupt protocol of every long function), cameras
(Cameras), camera_formats (load_cameras / save_cameras), trajectories
(make_trajectory), gaussians (GaussianScene), ply (read_ply / write_ply), sh (eval_sh), rasterize (render), losses,
optimize (fit_scene), pose (estimate_relative_pose), stereo (stereo_depth), prior (coarse_prior), views
(make_view_pair), pipeline (make_path / coarse_video / reconstruct), video, imageio, synthetic (procedural_scene),
videomodel (VideoModel, placers), schedule (NoiseSchedule, REFERENCE_TIMESTEP), cogvideo_load (load_video_model),
leap (leap_sample / teacher_sample), tiny_cogvideo (write_tiny_model), distributed (torchrun helpers), distill
(distill: VideoScene Algorithm 1), ddpnet (choose_timestep / train_ddpnet), replicate (the miniature replication), cli / demo (``python -m vscene_engine``).
"""

__version__ = "0.1.0"
