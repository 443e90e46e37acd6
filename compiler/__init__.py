"""How it runs: backends (one module each, behind compiler.backend), the runtime (dispatcher, sampling loop,
conditioning) and calibration (change curves, scale/shift corrections)."""
