"""What the user reviews after a run, and re-fusion when they untick an atlas.

A :class:`Review` keeps the run's full :class:`crossmodalmas.result.Result` (every registered
atlas), the segmentation node it made, its preview nodes and the label names. Re-fusion asks
the compute package (:func:`crossmodalmas.refusion.refuse`) to fuse again from that result with
the ticked atlases only, without registering again, and updates the same segmentation node and
previews in place, so what the user is looking at changes and nothing piles up in the scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

from CrossModalMASLib.label_tables import LabelInfo
from CrossModalMASLib.previews import Previews, update_previews
from CrossModalMASLib.segmentation_nodes import update_segmentation


def kept_indices(atlas_names: list[str], ticked: Iterable[str]) -> list[int]:
    """Indices into ``atlas_names`` of the ticked atlases.

    Raises:
        ValueError: none of the result's atlases is ticked.
    """
    ticked = set(ticked)
    keep = [index for index, name in enumerate(atlas_names) if name in ticked]
    if not keep:
        raise ValueError(f"Re-fuse: none of the run's atlases ({', '.join(atlas_names)}) is ticked; tick at least one")
    return keep


@dataclass
class Review:
    """A finished run as the user reviews it.

    Attributes:
        result: the run's result with every registered atlas.
        segmentation: the segmentation node made from it.
        previews: its preview nodes (None when previews were cleared or not made).
        infos: names, colours and terminology of the label values.
        current: the result now shown (the last re-fusion's, else ``result``).
    """

    result: object
    segmentation: object
    previews: Optional[Previews]
    infos: Mapping[int, LabelInfo]
    current: Optional[object] = None

    def refuse(self, ticked: Iterable[str], method: Optional[str] = None):
        """Fuse again with the ``ticked`` atlases (names as in the result) and ``method``.

        Args:
            ticked: names of the atlases to keep.
            method: a fusion method (``mv``, ``nlwv``, ``loa``...); None keeps the run's.

        Returns:
            The new result, also now shown in the segmentation node and the previews.

        Raises:
            ValueError: no atlas of the run is ticked.
        """
        keep = kept_indices(list(self.result.atlas_names), ticked)
        from crossmodalmas.refusion import refuse  # loads torch: only when the user re-fuses

        self.current = refuse(self.result, keep=keep, method=method)
        update_segmentation(self.segmentation, self.current.labels, self.infos)
        if self.previews is not None:
            update_previews(self.previews, self.current)
        return self.current
