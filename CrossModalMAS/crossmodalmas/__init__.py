"""CrossModalMAS compute package: cross-modality multi-atlas segmentation.

Importable without 3D Slicer (it never imports slicer, vtk or qt). The one entry point that
both the Slicer module and the command line call is :func:`crossmodalmas.pipeline.segment`.
Importing this package does no work: submodules load torch and SimpleITK only when used.
"""

__version__ = "0.1.0"
