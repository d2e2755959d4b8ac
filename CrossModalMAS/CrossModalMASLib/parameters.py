"""The module's settings in its parameter node (a ``vtkMRMLScriptedModuleNode``), typed.

Everything a user picks lives here, so it is saved with the scene and restored with it: the
target, the atlas pairs with their ticks, the atlas folder, the ROI, the run options and the
output. Scalars are node parameters (strings), nodes are node references; atlas row ``i`` is the
references ``AtlasImage<i>`` and ``AtlasLabels<i>`` (a row may lack one while the user picks it,
which a multi-valued reference could not hold) plus a tick, and ``AtlasCount`` rows are kept.
:func:`apply_blocker` says in words why Apply cannot run yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from CrossModalMASLib import label_tables
from crossmodalmas.options import DeviceChoice, FusionMethod

ATLAS_IMAGE_ROLE, ATLAS_LABELS_ROLE = "AtlasImage", "AtlasLabels"
# The model choice "" means the bundled default network; "instance-opt" means none.
INSTANCE_OPT = "instance-opt"


class _Text:
    """A string parameter with a default (an unset parameter reads as the default)."""

    def __init__(self, name: str, default: str, kind=str):
        self.name, self.default, self.kind = name, default, kind

    def __get__(self, owner, owner_type=None):
        if owner is None:
            return self
        text = owner.node.GetParameter(self.name)
        return self.kind(text if text != "" else self.default)

    def __set__(self, owner, value) -> None:
        owner.node.SetParameter(self.name, str(value))


class _Reference:
    """A single node reference."""

    def __init__(self, role: str):
        self.role = role

    def __get__(self, owner, owner_type=None):
        return self if owner is None else owner.node.GetNodeReference(self.role)

    def __set__(self, owner, node) -> None:
        owner.node.SetNodeReferenceID(self.role, node.GetID() if node is not None else None)


@dataclass
class AtlasEntry:
    """One atlas row: intensity volume node, its labels (label map or segmentation), ticked or not."""

    image: Optional[object]
    labels: Optional[object]
    enabled: bool = True


class Parameters:
    """Typed access to the module's parameter node.

    Args:
        node: the ``vtkMRMLScriptedModuleNode`` holding the settings.
    """

    target = _Reference("Target")
    roi = _Reference("ROI")
    output_segmentation = _Reference("OutputSegmentation")
    atlas_folder = _Text("AtlasFolder", "")
    fusion = _Text("Fusion", "")  # "": the compute package's default (PLF where it can, else NLWV)
    select = _Text("Select", "0", int)  # 0: keep every atlas
    model = _Text("Model", "")
    device = _Text("Device", DeviceChoice.AUTO.value)
    refine = _Text("Refine", "-1", int)  # -1: the engine's default
    label_table = _Text("LabelTable", label_tables.AUTO)

    def __init__(self, node):
        if node is None:
            raise ValueError("Parameters(): 'node' must be a parameter node, got None")
        self.node = node

    @property
    def atlases(self) -> list[AtlasEntry]:
        """The atlas rows in order."""
        count = int(self.node.GetParameter("AtlasCount") or 0)
        ticks = self.node.GetParameter("AtlasEnabled").split(",")
        return [AtlasEntry(self.node.GetNodeReference(f"{ATLAS_IMAGE_ROLE}{i}"),
                           self.node.GetNodeReference(f"{ATLAS_LABELS_ROLE}{i}"),
                           ticks[i] != "0" if i < len(ticks) else True) for i in range(count)]

    @atlases.setter
    def atlases(self, entries: Sequence[AtlasEntry]) -> None:
        was_modifying = self.node.StartModify()
        try:
            for index in range(max(len(entries), int(self.node.GetParameter("AtlasCount") or 0))):
                entry = entries[index] if index < len(entries) else AtlasEntry(None, None)
                for role, node in ((ATLAS_IMAGE_ROLE, entry.image), (ATLAS_LABELS_ROLE, entry.labels)):
                    self.node.SetNodeReferenceID(f"{role}{index}", node.GetID() if node is not None else None)
            self.node.SetParameter("AtlasCount", str(len(entries)))
            self.node.SetParameter("AtlasEnabled", ",".join("1" if e.enabled else "0" for e in entries))
        finally:
            self.node.EndModify(was_modifying)


def _node_ids(node) -> set[str]:
    return {node.GetID()} if node is not None else set()


def apply_blocker(parameters: Parameters) -> str:
    """Why Apply cannot run with these settings, in words; "" when it can."""
    target = parameters.target
    if target is None:
        return "Select a target volume."
    ticked = [(i, e) for i, e in enumerate(parameters.atlases, start=1) if e.enabled]
    folder = parameters.atlas_folder.strip()
    if not ticked and not folder:
        return "Add at least one atlas: a volume with its label map or segmentation, or an atlas folder."
    for index, entry in ticked:
        if entry.image is None or entry.labels is None:
            return f"Atlas {index}: pick both its volume and its label map or segmentation (or untick it)."
        if entry.image.GetID() == entry.labels.GetID():
            return f"Atlas {index}: its volume and its labels are the same node."
        if target.GetID() in _node_ids(entry.image) | _node_ids(entry.labels):
            return f"Atlas {index}: it uses the target {target.GetName()}; pick another target or untick it."
    if folder and not Path(folder).exists():
        return f"Atlas folder {folder}: does not exist."
    if parameters.fusion and parameters.fusion not in {m.value for m in FusionMethod}:
        return f"Fusion method {parameters.fusion!r} is unknown."
    return ""
