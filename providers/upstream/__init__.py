"""Reaching upstream APIs: which URLs and addresses a provider may use, checked on every connection."""
