"""LeRobot plugin for the policies that dataspace trains (``"type": "dataspace_bc"``).

LeRobot's scripts import every installed ``lerobot_policy_*`` package
(``lerobot.utils.import_utils.register_third_party_plugins``); importing this one
registers :class:`DataspaceBCConfig` under ``dataspace_bc``, so
``PreTrainedConfig.from_pretrained(DIR)``, ``DataspaceBCPolicy.from_pretrained(DIR)``
and ``make_pre_post_processors(cfg, pretrained_path=DIR)`` read a dataspace export.

Without LeRobot, only :mod:`.core` (plain torch) is usable: ``load_export(DIR)``.
"""

from __future__ import annotations

import importlib.util

from .core import POLICY_TYPE, ExportedPolicy, ExportFormatError, load_export

__all__ = ["POLICY_TYPE", "ExportFormatError", "ExportedPolicy", "load_export"]

if importlib.util.find_spec("lerobot") is not None:
    from .configuration_dataspace_bc import DataspaceBCConfig
    from .modeling_dataspace_bc import DataspaceBCPolicy
    from .processor_dataspace_bc import make_dataspace_bc_pre_post_processors

    __all__ += ["DataspaceBCConfig", "DataspaceBCPolicy", "make_dataspace_bc_pre_post_processors"]
