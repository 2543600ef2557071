"""The Django admin: providers with their health history, model groups, usage, and the index's dashboard (imported here so the admin registers them)."""

from providers.admin import dashboard, model_group_admin, provider_admin, usage_admin  # noqa: F401
