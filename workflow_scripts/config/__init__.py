"""Configuration: typed dataclasses (typed.py), presets + validation (loader.py), stage views (stages.py)."""
