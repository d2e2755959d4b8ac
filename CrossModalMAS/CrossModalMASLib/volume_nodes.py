"""Volume and label map nodes <-> :class:`crossmodalmas.volume.Volume` / ``LabelMap``.

The compute package's data contract is a KJI array plus a 4x4 IJK -> RAS matrix, the order and
the matrix a volume node holds (``slicer.util.arrayFromVolume``, ``GetIJKToRASMatrix``), so the
conversion copies the voxels and the matrix, nothing is resampled.

Frames: a node may sit under a parent transform. Every matrix here is given in the coordinate
frame of one transform node, ``frame`` (None: the world), so a target and its atlases under
different linear transforms line up as the user sees them; a non-linear transform is refused
(the message says to harden it). Results are put under the target's parent transform, in the
target's own frame, so they stay aligned with it when that transform changes.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from crossmodalmas.volume import LabelMap, Volume


def node_to_frame(node, frame=None) -> np.ndarray:
    """The 4x4 matrix from ``node``'s own coordinates to ``frame``'s (a transform node or None).

    Raises:
        ValueError: the transforms between them are not linear.
    """
    parent = node.GetParentTransformNode()
    if parent is frame:
        return np.eye(4)
    matrix = vtk.vtkMatrix4x4()
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(parent, frame, matrix):
        raise ValueError(f"{node.GetName()}: it is under a non-linear transform; harden the transform first "
                         "(Transforms module) or remove it")
    return slicer.util.arrayFromVTKMatrix(matrix)


def ijk_to_ras(node, frame=None) -> np.ndarray:
    """``node``'s IJK -> RAS matrix (4x4, mm) in ``frame``'s coordinates."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return node_to_frame(node, frame) @ slicer.util.arrayFromVTKMatrix(matrix)


def _voxels(node, role: str) -> np.ndarray:
    if node is None:
        raise ValueError(f"{role}: no node given")
    image = node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise ValueError(f"{role} {node.GetName()}: the node holds no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"{role} {node.GetName()}: {image.GetNumberOfScalarComponents()} components per voxel "
                         "(RGB or vector); a scalar volume is needed")
    return np.array(slicer.util.arrayFromVolume(node), copy=True)


def volume_from_node(node, frame=None, role: str = "volume") -> Volume:
    """A scalar volume node as a float32 :class:`Volume` (voxels copied; the node is not changed).

    Args:
        node: a ``vtkMRMLScalarVolumeNode``.
        frame: the transform node whose coordinates the matrix is given in (None: world).
        role: how error messages name the node ("target", "atlas image", ...).

    Raises:
        ValueError: no node, no voxels, a vector volume, or a non-linear transform.
    """
    array = _voxels(node, role).astype(np.float32, copy=False)
    return Volume(array, ijk_to_ras(node, frame))


def labels_from_labelmap_node(node, frame=None, role: str = "atlas labels") -> LabelMap:
    """A label map volume node as an int32 :class:`LabelMap`.

    Raises:
        ValueError: as :func:`volume_from_node`, or values that are not integers in int32 range.
    """
    array = _voxels(node, role)
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        raise ValueError(f"{role} {node.GetName()}: the label map holds non-integer values")
    if array.size and (array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max):
        raise ValueError(f"{role} {node.GetName()}: label values outside the int32 range")
    return LabelMap(array.astype(np.int32), ijk_to_ras(node, frame))


def set_geometry(node, matrix: np.ndarray) -> None:
    """Set ``node``'s IJK -> RAS matrix (4x4, in its parent transform's frame)."""
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.asarray(matrix, dtype=np.float64)))


def add_volume_node(scene, data, name: str, labels: bool = False, frame=None, display: bool = True):
    """Add a new volume node holding ``data`` (a Volume or LabelMap) to ``scene``.

    Args:
        scene: the MRML scene.
        data: the voxels and their IJK -> RAS matrix, in ``frame``'s coordinates.
        name: the node name (made unique in the scene).
        labels: add a ``vtkMRMLLabelMapVolumeNode`` (int32 voxels) instead of a scalar volume.
        frame: the transform node to put the new node under (None: none).
        display: create the default display nodes (not for a node that only carries data).

    Returns:
        The new node.
    """
    class_name = "vtkMRMLLabelMapVolumeNode" if labels else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    update_volume_node(node, data)
    if frame is not None:
        node.SetAndObserveTransformNodeID(frame.GetID())
    if display:
        node.CreateDefaultDisplayNodes()
    return node


def update_volume_node(node, data) -> None:
    """Replace ``node``'s voxels and geometry by ``data``'s (a Volume or LabelMap)."""
    set_geometry(node, data.ijk_to_ras)
    dtype = np.int32 if isinstance(data, LabelMap) else np.float32
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(data.array, dtype=dtype))

