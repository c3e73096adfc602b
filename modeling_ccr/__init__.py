"""modeling-ccr: cross-attention image-text matchers as Hugging Face models.

`modeling_ccr.models` is the checkpoint code (what a saved model carries); the rest of the package is
the library around it: data, metrics, evaluation, training, the Hub and the `ccr` command.
Importing the package registers every backbone with `AutoConfig` / `AutoModel`.
"""

from ._version import __version__
from .models import (
    BACKBONES,
    EnsembleConfig,
    EnsembleModel,
    MatcherOutput,
    MatcherPreTrainedModel,
    ScanConfig,
    ScanModel,
)

__all__ = [
    "BACKBONES",
    "EnsembleConfig",
    "EnsembleModel",
    "MatcherOutput",
    "MatcherPreTrainedModel",
    "ScanConfig",
    "ScanModel",
    "__version__",
]
