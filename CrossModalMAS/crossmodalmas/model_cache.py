"""An in-process cache of loaded networks: a batch of segmentations (``segment-batch``, or
:func:`crossmodalmas.pipeline.segment` called in a loop) loads each network once.

A network is keyed by its weights file's resolved path, the entry's sha256, its architecture
and arguments, and the device. A hit first re-checks the file's sha256
(:func:`crossmodalmas.models.verify`, milliseconds for the bundled ~1 MB weights), so it is
always the network a fresh load would give, and a damaged or replaced file fails as it would
on a fresh load. At most :data:`MAX_NETWORKS` networks are kept (the least recently used is
dropped). Callers use the networks for inference only and must not change their weights.
"""

from __future__ import annotations

import json
from collections import OrderedDict

from crossmodalmas.models import ModelEntry, load_network, verify

MAX_NETWORKS = 4
_networks: "OrderedDict[tuple[str, ...], object]" = OrderedDict()


def _key(entry: ModelEntry, device) -> tuple[str, ...]:
    import torch

    return (str(entry.path().resolve()), entry.sha256, entry.architecture,
            json.dumps(entry.arguments, sort_keys=True), str(torch.device(device)))


def cached_network(entry: ModelEntry, device):
    """The entry's network on ``device``, loaded on first use and reused afterwards.

    Args:
        entry: the model (its ``file`` under its own folder, else the bundled models folder).
        device: a ``torch.device`` or its name.

    Returns:
        The ``torch.nn.Module`` in eval mode on ``device``.

    Raises:
        InputError: anything :func:`crossmodalmas.models.load_network` raises (missing,
            damaged or unfitting weights), on a hit as on a first load.
    """
    key = _key(entry, device)
    network = _networks.get(key)
    if network is None:
        network = load_network(entry, device=device)
        _networks[key] = network
        while len(_networks) > MAX_NETWORKS:
            _networks.popitem(last=False)
    else:
        verify(entry)
        _networks.move_to_end(key)
    # A no-op unless a CUDA out-of-memory fallback moved the network to the CPU in an earlier run.
    return network.to(device)


def clear_cache() -> None:
    """Forget every cached network (frees their memory once nothing else holds them)."""
    _networks.clear()
