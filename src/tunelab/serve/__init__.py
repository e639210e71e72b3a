"""`tunelab serve`: an OpenAI-compatible HTTP API (FastAPI + uvicorn) for a finished run."""
