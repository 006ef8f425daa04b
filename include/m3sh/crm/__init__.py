"""CRM sync: extract changed records per CRM, de-duplicate customers, upsert into m3ter, write back ids."""
