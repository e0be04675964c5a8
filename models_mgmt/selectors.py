from models_mgmt.models import ServedModel


def enabled_models():
    return ServedModel.objects.filter(enabled=True)


def enabled_model(model_id: str) -> ServedModel | None:
    return enabled_models().filter(model_id=model_id).first()


def unknown_model_ids(model_ids) -> set[str]:
    """The ids among `model_ids` that the catalog does not have (enabled or not)."""
    known = set(
        ServedModel.objects.filter(model_id__in=model_ids).values_list("model_id", flat=True)
    )
    return set(model_ids) - known
