"""``python -m crossmodalmas`` (what the Slicer module runs as ``PythonSlicer -m crossmodalmas``)."""

import sys

from crossmodalmas.cli import main

if __name__ == "__main__":
    sys.exit(main())
