"""Plan and contract automation: rules over m3ter state fire idempotent actions, exactly once.

* :mod:`~m3sh.automation.rules` - pure evaluation (shared by the DAG, the sensors and the triggers);
* :mod:`~m3sh.automation.evaluate` - one pass over m3ter list endpoints (sync and async fetchers);
* :mod:`~m3sh.automation.actions` - plan switches, balance resets/top-ups, custom fields, CRM, notify;
* :mod:`~m3sh.automation.ledger` - the S3 ledger of fired keys (exactly once) and its time-ordered audit index;
* :mod:`~m3sh.automation.audit` - the audit trail over that index: filters, exact totals, pages, CSV;
* :mod:`~m3sh.automation.notifications` - m3ter notification configurations from the rules.
"""
