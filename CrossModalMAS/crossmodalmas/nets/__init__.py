"""Networks: the consistent registration network and the similarity network.

:func:`build_network` turns a ``models.json`` entry's ``architecture`` and ``arguments``
into a module, so bundled and user-trained models load the same way.
"""

from __future__ import annotations

from torch import nn

from crossmodalmas.nets.registration_net import ConsistentRegistrationNet
from crossmodalmas.nets.similarity import SimilarityNet

ARCHITECTURES = {
    "consistent-registration-net": ConsistentRegistrationNet,
    "similarity-net": SimilarityNet,
}


def build_network(architecture: str, arguments: dict) -> nn.Module:
    """Build the network named ``architecture`` with keyword ``arguments``.

    Raises:
        ValueError: for an unknown architecture or arguments it does not take.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"build_network(): unknown architecture {architecture!r}; "
                         f"known: {', '.join(sorted(ARCHITECTURES))}")
    try:
        return ARCHITECTURES[architecture](**arguments)
    except TypeError as error:
        raise ValueError(f"build_network(): bad arguments for {architecture!r}: {error}") from error
