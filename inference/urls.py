from django.urls import path

from inference import views

urlpatterns = [
    path("chat/completions", views.chat_completions),
    path("completions", views.completions),
    path("embeddings", views.embeddings),
    path("models", views.list_models),
    path("models/<path:model_id>", views.retrieve_model),
    path("<path:rest>", views.unknown_endpoint),
]
