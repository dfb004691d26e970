"""`mt serve`: a trained run behind an HTTP API: the stage (stage.py), the FastAPI app (app.py),
dynamic batching by cost (batch.py), the attention matrix (attention.py), the demo page."""
