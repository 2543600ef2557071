from django.apps import AppConfig


class PluginsApiConfig(AppConfig):
    name = "plugins_api"
    verbose_name = "Echo API"
