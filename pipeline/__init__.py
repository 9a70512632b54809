"""Pipeline assembly (`pipeline.create_pipeline`), its configuration (`configs`), the local and
Kubeflow runners, the demo, reports and scheduling.

May import: `cardio.components` and everything below it; never `cardio.cli`.
"""
