"""Checkpoint code: everything a saved checkpoint carries for `trust_remote_code` loading.

Every module here imports only its siblings (`from .x import y`), never the rest of `modeling_ccr`:
transformers copies a model's modeling file and the sibling files it imports into the checkpoint
folder, and they must run there without this package. `tests/test_layout.py` enforces it.

Importing this package registers every backbone with `AutoConfig` / `AutoModel`, the image processor and
processor of vision-tower models with `AutoImageProcessor` / `AutoProcessor`, and the
`image-text-matching` pipeline task.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor

from . import pipelines  # noqa: F401  (registers the image-text-matching task)
from .backbones import SINGLE_BACKBONES
from .configuration_ensemble import EnsembleConfig
from .configuration_scan import ScanConfig
from .image_processing_matcher import MatcherImageProcessor
from .modeling_ensemble import EnsembleModel
from .modeling_matcher import MatcherOutput, MatcherPreTrainedModel
from .modeling_scan import ScanModel
from .processing_matcher import MatcherProcessor

# Backbone name (as used in training configs) -> (config class, model class).
BACKBONES = {**SINGLE_BACKBONES, "ensemble": (EnsembleConfig, EnsembleModel)}

for _config_class, _model_class in BACKBONES.values():
    AutoConfig.register(_config_class.model_type, _config_class)
    AutoModel.register(_config_class, _model_class)
    # Saved checkpoints carry `auto_map` and a copy of the modeling code (trust_remote_code loading).
    _config_class.register_for_auto_class()
    _model_class.register_for_auto_class("AutoModel")
    AutoImageProcessor.register(
        _config_class, slow_image_processor_class=MatcherImageProcessor, exist_ok=True
    )
    AutoProcessor.register(_config_class, MatcherProcessor, exist_ok=True)
# A vision-tower checkpoint carries its processors' code too.
MatcherImageProcessor.register_for_auto_class("AutoImageProcessor")
MatcherProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "BACKBONES",
    "EnsembleConfig",
    "EnsembleModel",
    "MatcherImageProcessor",
    "MatcherOutput",
    "MatcherPreTrainedModel",
    "MatcherProcessor",
    "ScanConfig",
    "ScanModel",
]
