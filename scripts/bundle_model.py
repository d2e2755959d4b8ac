"""Bundle a finished training run's model into ``CrossModalMAS/Resources/Models``.

    python scripts/bundle_model.py RUN_DIR [--default]

Copies ``RUN_DIR/model.pt`` to ``Resources/Models/<name>.pt`` and adds the run's
``model.json`` entry to ``models.json`` (replacing an entry of the same name). ``--default``
makes it the default model of its task, registration or similarity (the previous default stops being one). The
benchmark script later fills in the measured accuracy and inference times.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

from crossmodalmas.models import (MANIFEST_NAME, add_to_manifest, bundled_models_dir, read_entry,
                                  read_manifest)


def bundle(run: Path, make_default: bool, folder: Path) -> Path:
    entry = read_entry(run / "model.json")
    target = folder / f"{entry.name}.pt"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / entry.file, target)
    entry = dataclasses.replace(entry, file=target.name, default=make_default, folder=folder)
    if make_default and (folder / MANIFEST_NAME).is_file():
        for other in read_manifest(folder):
            if other.default and other.task == entry.task and other.name != entry.name:
                add_to_manifest(dataclasses.replace(other, default=False), folder)
    add_to_manifest(entry, folder)
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("run", type=Path, help="a finished train-registration or train-similarity folder")
    parser.add_argument("--default", action="store_true", help="make it the default model of its task")
    parser.add_argument("--models-dir", type=Path, default=bundled_models_dir())
    args = parser.parse_args(argv)
    print(bundle(args.run, args.default, args.models_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
