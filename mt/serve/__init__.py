"""`mt serve`: a trained run behind an HTTP API: the stage (stage.py), the FastAPI routes (app.py),
what a request holds and how errors read (api.py), the guard around each request (gate.py),
dynamic batching by cost (batch.py), the attention matrix (attention.py), the demo page."""
