"""Human-readable names for label values (MM-WHS whole-heart codes).

The Multi-Modality Whole Heart Segmentation challenge (MM-WHS, Zhuang et al.) codes its seven
substructures with the values below; the heart phantom of :mod:`crossmodalmas.phantoms` uses
the same codes. Any other value is named ``"Label N"``.
"""

from __future__ import annotations

import numbers

MMWHS_NAMES: dict[int, str] = {
    205: "LV myocardium",
    420: "Left atrium",
    500: "LV blood pool",
    550: "Right atrium",
    600: "Right ventricle",
    820: "Ascending aorta",
    850: "Pulmonary artery",
}


def label_name(value) -> str:
    """The name of a label value: the MM-WHS name for its codes, else ``"Label N"``.

    Args:
        value: an integer label value (Python or numpy integer, or an integral float).

    Returns:
        The name, e.g. ``label_name(500) == "LV blood pool"``, ``label_name(7) == "Label 7"``.

    Raises:
        TypeError: ``value`` is not an integer.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or int(value) != value:
        raise TypeError(f"label_name(): 'value' must be an integer label value, got {value!r}")
    value = int(value)
    return MMWHS_NAMES.get(value, f"Label {value}")
