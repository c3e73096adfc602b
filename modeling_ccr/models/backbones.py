"""The registry of single-model backbones (ensembles of them are registered by the package): training-config name -> (config class, model class).

Checkpoint code (sibling imports only), so that an ensemble checkpoint can build any member model
without the package installed.
"""

from __future__ import annotations

from .configuration_bfan import BfanConfig
from .configuration_chan import ChanConfig
from .configuration_damsm import DamsmConfig
from .configuration_dvsa import DvsaConfig
from .configuration_laps import LapsConfig
from .configuration_scan import ScanConfig
from .configuration_sgraf import SafConfig, SgrConfig
from .configuration_vse_infty import VseInftyConfig
from .configuration_vsepp import VseppConfig
from .modeling_bfan import BfanModel
from .modeling_chan import ChanModel
from .modeling_damsm import DamsmModel
from .modeling_dvsa import DvsaModel
from .modeling_laps import LapsModel
from .modeling_scan import ScanModel
from .modeling_sgraf import SafModel, SgrModel
from .modeling_vse_infty import VseInftyModel
from .modeling_vsepp import VseppModel

SINGLE_BACKBONES = {
    "scan": (ScanConfig, ScanModel),
    "bfan": (BfanConfig, BfanModel),
    "sgr": (SgrConfig, SgrModel),
    "saf": (SafConfig, SafModel),
    "vsepp": (VseppConfig, VseppModel),
    "dvsa": (DvsaConfig, DvsaModel),
    "damsm": (DamsmConfig, DamsmModel),
    "vse_infty": (VseInftyConfig, VseInftyModel),
    "chan": (ChanConfig, ChanModel),
    "laps": (LapsConfig, LapsModel),
}
