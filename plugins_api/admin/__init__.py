"""The Django admin for client keys: issue, list, edit, revoke, rotate and delete them, and their history.

Imported here so that the admin's autodiscovery registers them.
"""

from plugins_api.admin import client_key_admin  # noqa: F401
