"""The admin's served model and node forms validate as `manage.py models register` and
`manage.py nodes add` do (ServedModel.clean and Node.clean, one validation per model): the same
rows are refused with the same messages, and nothing is saved."""

import pytest

from models_mgmt.models import Node, ServedModel


def _model_form(**overrides) -> dict[str, str]:
    data = {"model_id": "llama", "engine": "openai", "task": "chat",
            "base_url": "http://gpu-1:8000/v1", "upstream_model": "", "vram_bytes": "0",
            "engine_settings": "{}", "extra_fields": "[]", "keep_alive_seconds": "900",
            "max_replicas": "1",
            "enabled": "on"}  # fmt: skip
    data.update(overrides)
    return data


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"base_url": ""}, "The openai engine needs the server&#x27;s base URL."),
        ({"engine": "process", "base_url": "", "engine_settings": '{"command": "serve"}'},
         "The process engine needs --command with a {port} placeholder."),
        ({"extra_fields": '["top k"]'}, "A list of field names (letters, digits and _)"),
    ],
)  # fmt: skip
def test_the_admin_refuses_a_served_model_the_cli_refuses(admin_client, overrides, message):
    response = admin_client.post("/admin/models_mgmt/servedmodel/add/", _model_form(**overrides))

    assert response.status_code == 200
    assert message in response.content.decode()
    assert not ServedModel.objects.exists()


def test_the_admin_adds_a_valid_served_model(admin_client):
    response = admin_client.post("/admin/models_mgmt/servedmodel/add/", _model_form())

    assert response.status_code == 302
    assert ServedModel.objects.get().base_url == "http://gpu-1:8000/v1"


def test_the_admin_refuses_a_node_without_memory_as_the_cli_does(admin_client, manage):
    form = {"name": "gpu-1", "vram_budget_bytes": "0", "enabled": "on"}

    response = admin_client.post("/admin/models_mgmt/node/add/", form)
    cli = manage("nodes", "add", "gpu-1", "--vram-bytes", "0")

    assert response.status_code == 200
    assert "VRAM budget must be at least 1 byte." in response.content.decode()
    assert cli.returncode != 0
    assert "VRAM budget must be at least 1 byte." in cli.stderr
    assert not Node.objects.exists()
