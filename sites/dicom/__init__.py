"""DICOM at a site: header index and contract check, ingestion to tensors, synthetic studies.

Nothing here imports MONAI at import time; `medfed.sites.dicom.reader`
does, because `import monai` costs seconds.
"""
