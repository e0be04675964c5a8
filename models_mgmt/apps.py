from django.apps import AppConfig


class ModelsMgmtConfig(AppConfig):
    """Model catalog, nodes and the ResourceManager; built in the model-management issue."""

    name = "models_mgmt"
    verbose_name = "Models"
