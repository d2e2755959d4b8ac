"""Slicer-side code of the CrossModalMAS module, without Qt.

MRML nodes <-> the compute package's arrays (:mod:`volume_nodes`, :mod:`segmentation_nodes`),
label names and colours (:mod:`label_tables`), atlases from the scene or a folder
(:mod:`atlas_sources`), the settings in the parameter node (:mod:`parameters`,
:mod:`run_options`), the background run (:mod:`background_process`, :mod:`segmentation_run`,
:mod:`segmentation_job`), the review and re-fusion (:mod:`previews`, :mod:`review`) and the
first-use installs (:mod:`dependencies`). Importing the package does nothing: each module imports
slicer and vtk only where it works on nodes, and nothing here imports Qt or torch at load time.
"""
