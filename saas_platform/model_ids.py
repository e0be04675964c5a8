"""A model's public id, what clients send as `model`: the catalog's ids (models_mgmt), the
tenants' allow lists (tenants) and the billing rows that name a model (billing) share its limit,
and those apps do not all import each other."""

MODEL_ID_MAX_LENGTH = 200
