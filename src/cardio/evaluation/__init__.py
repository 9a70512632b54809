"""Judging models: exact AUCs with DeLong CIs and tests (`statistics`), the model comparison and
its report (`comparison`, `comparison_report`), and explanations of served models (`explain`).

May import: `cardio.data`, `cardio.imaging`, `cardio.features`.
"""
