"""The REST API (FastAPI): jobs, results, health and metrics, behind API keys."""
