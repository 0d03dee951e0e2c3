"""The model families hrm-edge deploys, behind one driving interface.

`create_model(config)` returns an `HRM` for an `HRMConfig` and a `TRM` for a `TRMConfig`;
both expose `embed`, `initial_carry`, `reason(one_step_grad=...)`, `heads`, `segment`,
`set_compute_dtype`, `parameter_count`, `config` and `inner` (official parameter names).
Importing this package does not import torch (configs are read on devices without it);
`create_model` imports the torch modules on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hrm_edge.model.config import (
    FAMILIES,
    PRESETS,
    HRMConfig,
    TRMConfig,
    config_from_dict,
    preset_config,
)

if TYPE_CHECKING:
    from hrm_edge.model.hrm import HRM
    from hrm_edge.model.trm import TRM

__all__ = ["FAMILIES", "PRESETS", "HRMConfig", "TRMConfig", "config_from_dict", "create_model", "preset_config"]


def create_model(config: HRMConfig | TRMConfig, compute_dtype: str | None = None) -> HRM | TRM:
    """A freshly initialised model of the config's family (compute dtype "float32" by default)."""
    if isinstance(config, TRMConfig):
        from hrm_edge.model.trm import TRM

        return TRM(config, compute_dtype)
    if isinstance(config, HRMConfig):
        from hrm_edge.model.hrm import HRM

        return HRM(config, compute_dtype)
    raise TypeError(f"create_model needs an HRMConfig or a TRMConfig, got {type(config).__name__}")
