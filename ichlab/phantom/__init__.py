"""Generated head-CT series: the dataset every notebook, test and quick run can use.

``generate_dataset`` writes real DICOM files with RSNA-style labels and lesion masks;
``load_masks`` reads the masks back for scoring explanations. The phantom is a teaching
tool: results measured on it say nothing about clinical performance.
"""

from ichlab.phantom.dataset import generate_dataset, load_masks

__all__ = ["generate_dataset", "load_masks"]
