"""The Django admin: providers with their health history, usage, and the index's dashboard (imported here so the admin registers them)."""

from providers.admin import dashboard, provider_admin, usage_admin  # noqa: F401
