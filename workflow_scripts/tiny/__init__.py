"""Tiny-preset models, one floor above models and data: the UAE encoder/decoder (``uae``), UniToken's
LM and vision tower (``unitoken``) and the reward backbones (``backbones``), each the real library class
built small with fixed-seed random weights; ``stage`` is the ``build_tiny_model`` entry."""
