"""The method itself, free of orchestration and of Hydra: the M3D engine, the selection
baselines, the moment diagnostics, seeding, memory sizing and compute choices (device, compile,
bf16)."""
