"""Names, colours and standard terminology of label values: the known label tables.

Three tables ship in ``label_tables/`` (CSV, one row per value): the MM-WHS whole-heart codes
(``mmwhs``), FreeSurfer's aseg labels (``aseg``, what SynthSeg writes) and TotalSegmentator's
``total`` task ids (``totalsegmentator``). A segment made from a label value takes its name and
colour from, in this order: the atlases' own segments or colour table (see
:mod:`CrossModalMASLib.atlas_sources`), the chosen table, else ``"Label N"`` with a generated
colour.

Which table: :func:`choose_table` picks one only where the label values leave no doubt, because
the small integers 1, 2, 3 mean different things in different tables (and nothing in most
atlases): MM-WHS when every value is an MM-WHS code, aseg when every value is an aseg code and at
least one is a code above 40 that only aseg uses that way. TotalSegmentator ids (1..117) are
never guessed; the user names that table explicitly.
"""

from __future__ import annotations

import colorsys
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

TABLES_FOLDER = Path(__file__).resolve().parent / "label_tables"
TABLE_FILES = {"mmwhs": "mmwhs.csv", "aseg": "freesurfer_aseg.csv", "totalsegmentator": "totalsegmentator.csv"}
AUTO, NONE = "auto", "none"
TABLE_CHOICES = (AUTO, *TABLE_FILES, NONE)

# Slicer's serialised terminology entry: context~category~type~type modifier~anatomic context~
# region~region modifier, each coded entry as scheme^value^meaning (empty: ^^).
_TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass(frozen=True)
class LabelInfo:
    """What a segment made from one label value looks like.

    Attributes:
        value: the label value (> 0).
        name: the segment name.
        color: RGB in [0, 1].
        terminology: Slicer's serialised terminology entry, or "" where no standard code is known.
    """

    value: int
    name: str
    color: tuple[float, float, float]
    terminology: str = ""


def generated_color(value: int) -> tuple[float, float, float]:
    """A distinct, stable colour for a label value with no colour of its own (golden-ratio hues)."""
    hue = (int(value) * 0.618033988749895) % 1.0
    return colorsys.hsv_to_rgb(hue, 0.65, 0.9)


def default_info(value: int) -> LabelInfo:
    """``"Label N"`` with a generated colour."""
    return LabelInfo(int(value), f"Label {int(value)}", generated_color(value))


def _coded(row: dict, prefix: str) -> str:
    return "^".join(row.get(f"{prefix}_{part}", "") or "" for part in ("scheme", "code", "meaning"))


def _terminology(row: dict) -> str:
    if not row.get("type_code"):
        return ""
    region = _coded(row, "region")
    return "~".join([_TERMINOLOGY_CONTEXT, _coded(row, "category"), _coded(row, "type"), _coded(row, "modifier"),
                     _ANATOMIC_CONTEXT if region != "^^" else "", region, _coded(row, "region_modifier")])


def _info_from_row(row: dict) -> LabelInfo:
    value = int(row["value"])
    if row.get("r"):
        color = tuple(int(row[c]) / 255.0 for c in "rgb")
    else:
        color = generated_color(value)
    return LabelInfo(value, row["name"], color, _terminology(row))


def load_table(name: str) -> dict[int, LabelInfo]:
    """A known label table as ``{value: LabelInfo}``.

    Args:
        name: one of ``"mmwhs"``, ``"aseg"``, ``"totalsegmentator"``.

    Raises:
        ValueError: ``name`` is not a known table.
    """
    if name not in TABLE_FILES:
        raise ValueError(f"load_table(): 'name' must be one of {sorted(TABLE_FILES)}, got {name!r}")
    with open(TABLES_FOLDER / TABLE_FILES[name], newline="", encoding="utf-8") as handle:
        rows = csv.DictReader(line for line in handle if not line.startswith("#"))
        return {info.value: info for info in map(_info_from_row, rows)}


def choose_table(values: Iterable[int]) -> Optional[str]:
    """The known table the label ``values`` unambiguously come from, or None (see the module doc)."""
    values = {int(v) for v in values} - {0}
    if not values:
        return None
    if values <= set(load_table("mmwhs")):
        return "mmwhs"
    aseg = set(load_table("aseg"))
    if values <= aseg and any(v > 40 for v in values):
        return "aseg"
    return None


def resolve_table(choice: str, values: Iterable[int]) -> Optional[str]:
    """The table to use for ``choice`` (``auto``, a table name or ``none``) and these values.

    Raises:
        ValueError: ``choice`` is not one of :data:`TABLE_CHOICES`.
    """
    if choice not in TABLE_CHOICES:
        raise ValueError(f"resolve_table(): 'choice' must be one of {list(TABLE_CHOICES)}, got {choice!r}")
    if choice == AUTO:
        return choose_table(values)
    return None if choice == NONE else choice


def describe(values: Iterable[int], known: Optional[dict[int, LabelInfo]] = None,
             table: Optional[str] = None) -> dict[int, LabelInfo]:
    """Names and colours for label ``values``: ``known`` first, then ``table``, else "Label N".

    Args:
        values: label values (0 is skipped).
        known: what the atlases themselves say about some values.
        table: a known table's name, or None.

    Returns:
        ``{value: LabelInfo}`` for every non-zero value, sorted by value.
    """
    known = known or {}
    from_table = load_table(table) if table else {}
    out = {}
    for value in sorted({int(v) for v in values} - {0}):
        out[value] = known.get(value) or from_table.get(value) or default_info(value)
    return out


def value_for_name(name: str, table: Optional[str]) -> Optional[int]:
    """The value a known ``table`` gives a segment called ``name`` (case- and separator-blind)."""
    if not table:
        return None
    wanted = _normalised(name)
    for value, info in load_table(table).items():
        if _normalised(info.name) == wanted:
            return value
    return None


def _normalised(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())
