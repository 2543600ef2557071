"""The Django admin: providers with their health history, and usage (imported here so the admin registers them)."""

from providers.admin import provider_admin, usage_admin  # noqa: F401
