"""Datasets to TFRecords: sources (PadChest, OpenI, generic CSV, synthetic) mapped to one record,
patient-level splits, salted patient ids, the converter with its quarantine, and previews.

May import: `cardio.imaging`, `cardio.features`.
"""
