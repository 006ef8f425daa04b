"""Alerting: one notifier that formats an m3sh alert and fans it out to the configured channels."""
