"""Which configured CRM source an m3ter external mapping belongs to.

``m3sh_crm_sync`` links each m3ter account to its CRM records with external mappings whose
``externalSystem`` is the CRM *source name* from ``crm.sources`` (so two Salesforce orgs are two
systems). Before several sources of one type were supported it wrote the CRM *type*
(``salesforce`` / ``hubspot``). Such a type-keyed mapping belongs to:

1. the source *named* after the type, if there is one (then it is that source's own mapping);
2. else the source of that type with ``legacy_mappings: true``;
3. else the only source of that type, unless it says ``legacy_mappings: false`` (set that on the
   survivor when a source named after its type is retired while another of the type remains);
4. else nobody: with several sources of the type it is ambiguous, logged once per resolver and
   not attributed. ``m3sh_crm_sync`` still links each record under its source name (found by the
   match keys), so only the stale type-keyed mapping is left unused.

``m3sh_crm_sync`` rewrites a type-keyed mapping it can attribute to its source's name the next time
it sees the record (one update; a re-run writes nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, get_args

from m3sh.config import CrmSource, CrmType

log = logging.getLogger(__name__)

CRM_TYPES: tuple[str, ...] = get_args(CrmType)
# The CRM object an account-level mapping points at, per CRM type (``company`` is tolerated for
# mappings written by hand).
ACCOUNT_TABLES: dict[str, tuple[str, ...]] = {"salesforce": ("account",), "hubspot": ("companies", "company")}
CRM_TABLES = {"salesforce": "Account", "hubspot": "companies"}


class SourceLinks:
    """Resolves external mappings to configured CRM sources (enabled or not: a disabled source's
    links must not be attributed to another source)."""

    def __init__(self, sources: Sequence[CrmSource]) -> None:
        self.by_name = {s.name: s for s in sources}
        self._legacy: dict[str, CrmSource | None] = {}
        self._warned: set[str] = set()
        for crm_type in CRM_TYPES:
            self._legacy[crm_type] = legacy_owner(sources, crm_type)

    def legacy_owner(self, crm_type: str) -> CrmSource | None:
        """The source type-keyed mappings of ``crm_type`` belong to (None: nobody, or ambiguous)."""
        owner = self._legacy.get(crm_type)
        if owner is None and crm_type not in self._warned:
            of_type = [s.name for s in self.by_name.values() if s.type == crm_type]
            if len(of_type) > 1:
                self._warned.add(crm_type)
                log.warning("external mappings keyed by the CRM type %r (written before mappings named the source) "
                            "are ambiguous between the %s sources %s and are not used; set legacy_mappings: true "
                            "on the source that wrote them", crm_type, crm_type, sorted(of_type))
        return owner

    def source_of(self, mapping: Mapping[str, Any]) -> CrmSource | None:
        """The configured source a mapping belongs to, or None (another system, a removed source, or
        an ambiguous type-keyed mapping)."""
        system = str(mapping.get("externalSystem") or "")
        if system in self.by_name:
            return self.by_name[system]
        if system.lower() in CRM_TYPES:
            return self.legacy_owner(system.lower())
        return None

    def account_links(self, mappings: Iterable[Mapping[str, Any]],
                      enabled_only: bool = True) -> list[tuple[CrmSource, str]]:
        """``(source, CRM record id)`` of every account-level mapping, best first (source priority,
        then name), one per source and record."""
        out: dict[tuple[str, str], tuple[CrmSource, str]] = {}
        for m in mappings:
            source = self.source_of(m)
            if source is None or (enabled_only and not source.enabled):
                continue
            if str(m.get("externalTable") or "").lower() not in ACCOUNT_TABLES[source.type]:
                continue
            out.setdefault((source.name, str(m["externalId"])), (source, str(m["externalId"])))
        return sorted(out.values(), key=lambda link: (link[0].priority, link[0].name, link[1]))


def legacy_owner(sources: Sequence[CrmSource], crm_type: str) -> CrmSource | None:
    """Rules 1-3 of the module docstring, from the configuration alone."""
    of_type = [s for s in sources if s.type == crm_type]
    named = next((s for s in of_type if s.name == crm_type), None)
    if named is not None:
        return named
    flagged = [s for s in of_type if s.legacy_mappings]
    if len(flagged) == 1:
        return flagged[0]
    if len(of_type) == 1 and of_type[0].legacy_mappings is not False:
        return of_type[0]
    return None
