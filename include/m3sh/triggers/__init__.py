"""Async triggers (run on the Airflow triggerer) for m3sh's deferrable sensors."""
