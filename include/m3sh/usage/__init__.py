"""Usage ingest: stream usage files and feeds, validate rows, submit idempotent m3ter measurements."""
