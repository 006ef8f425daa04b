"""Multi-ERP invoicing: m3ter bills -> enriched -> routed -> delivered to each destination, exactly once.

Modules:

* :mod:`.models` — the enriched bill every destination reads, and per-delivery outcomes.
* :mod:`.enrich` — m3ter account + custom fields, CRM owner/PO/address, line -> ERP item.
* :mod:`.routing` — config rules (currency, subsidiary, custom field, accounts, amount, cut-over).
* :mod:`.ledger` — what was delivered where (S3), so re-runs and backfills write nothing new.
* :mod:`.netsuite`, :mod:`.salesforce`, :mod:`.hubspot`, :mod:`.s3archive`, :mod:`.webhook` — one
  module per destination kind, each idempotent on its own (external ids, upserts, idempotency keys).
* :mod:`.deliver` — runs one destination over a batch of bills, isolating each bill's failure.
* :mod:`.reconcile` — m3ter bills vs each ERP vs the archive; HTML/CSV report.
"""
