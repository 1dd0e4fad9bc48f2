"""ichlab: intracranial hemorrhage detection on head-CT DICOM series, taught end to end.

The library holds the tested logic that the course notebooks, the exercises and the
``ichlab`` command call: DICOM to Hounsfield units, CT windows, slice order, a generated
head-CT dataset, the three EfficientNet-B0 paths, evaluation and Grad-CAM.
"""

__version__ = "0.1.0"

# The five hemorrhage subtypes in RSNA 2019 column order; models output one logit each.
SUBTYPES = (
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
)

# Label columns of an RSNA label table: the five subtypes, then "any" (their union).
LABEL_COLUMNS = SUBTYPES + ("any",)

__all__ = ["SUBTYPES", "LABEL_COLUMNS", "__version__"]
