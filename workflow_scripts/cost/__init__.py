"""Projected cost of a run before it runs: FLOPs per stage counted on meta-device layers of the published
models, converted to GPU-hours at a stated MFU (``python -m workflow_scripts.cost``)."""
