"""Serving over TF Serving's APIs: the files tensorflow_model_server reads (config.py), release
labels (releases.py), `cardio serve` (server.py, models.py, service.py, batching.py), the client
(client.py) and the demo's last step (demo.py).

May import: `cardio.evaluation`, `cardio.data`, `cardio.imaging`, `cardio.features`; never
`cardio.trainer` (what both need lives in the core).
"""
