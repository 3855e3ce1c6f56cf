"""HTTP edge (FastAPI)."""
