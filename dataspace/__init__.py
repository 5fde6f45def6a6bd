"""dataspace: a trusted data space for robot training data.

Importing the package is light (no torch): :func:`load_policy`, the one entry for
running a trained policy (``dataspace.load_policy(DIR).select_action(obs)``,
:mod:`dataspace.federated.inference`), is loaded on first use.
"""

from typing import TYPE_CHECKING

from dataspace import lazy

if TYPE_CHECKING:
    from dataspace.federated.inference import DeployedPolicy, load_policy

__all__ = ["DeployedPolicy", "load_policy"]

# heavy (torch): the inference entry is imported on first use, not with the package
__getattr__ = lazy.exports(
    __name__,
    {
        "DeployedPolicy": "dataspace.federated.inference",
        "load_policy": "dataspace.federated.inference",
    },
)
