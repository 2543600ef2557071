"""The audit trail: who changed which provider setting, when and from where, and its export."""
