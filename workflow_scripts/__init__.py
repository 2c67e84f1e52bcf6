"""umm-pipeline: training and evaluation of unified multimodal auto-encoders (UAE, UniToken)."""

__version__ = "0.1.0"
