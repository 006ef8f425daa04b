"""Salesforce emulator: SOAP login plus the REST query/sObject API that simple-salesforce uses."""

from m3sh.sandbox.salesforce.app import SalesforceEmulator

__all__ = ["SalesforceEmulator"]
