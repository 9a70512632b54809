"""Serving over TF Serving's gRPC API: the files tensorflow_model_server reads (config.py),
release labels (releases.py), the atomic Pusher (pusher.py), the export's Classify signature and
warm-up requests (signatures.py), `cardio serve` (server.py, models.py, service.py,
batching.py), the client (client.py) and the demo's last step (demo.py)."""
