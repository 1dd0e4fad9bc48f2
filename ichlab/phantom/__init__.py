"""Generated head-CT series: the dataset every notebook, test and quick run can use.

``generate_dataset`` writes real DICOM files with RSNA-style labels and lesion masks;
``load_masks`` reads the masks back for scoring explanations. The phantom is a teaching
tool, so results measured on it tell nothing about clinical performance.

Modules: ``anatomy`` (head and tissues), ``lesions`` (the five subtypes), ``quirks`` (RSNA
header quirks and pixel encodings), ``plan`` (all random choices of a dataset), ``render``
(pixels and masks), ``writer`` (DICOM files), ``dataset`` (the folder) and ``figures``.
"""

from ichlab.phantom.dataset import NOTICE, generate_dataset, load_masks, read_settings
from ichlab.phantom.quirks import QUIRK_NAMES, QUIRK_RATES

__all__ = ["NOTICE", "QUIRK_NAMES", "QUIRK_RATES", "generate_dataset", "load_masks", "read_settings"]
