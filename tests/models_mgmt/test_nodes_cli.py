from models_mgmt.models import Node, ServedModel


def test_nodes_add_list_and_models_pin_status(manage):
    added = manage("nodes", "add", "gpu-1", "--vram-bytes", "80000000000")
    registered = manage("models", "register", "llama", "--engine", "process", "--vram-bytes",
                        "1000", "--command", "llama-server --port {port}",
                        "--keep-alive", "60")  # fmt: skip
    pinned = manage("models", "pin", "llama")

    assert added.returncode == 0, added.stderr
    assert registered.returncode == 0, registered.stderr
    assert pinned.returncode == 0, pinned.stderr
    assert Node.objects.get().vram_budget_bytes == 80_000_000_000
    model = ServedModel.objects.get()
    assert (model.pinned, model.keep_alive_seconds) == (True, 60)
    assert model.engine_settings["command"] == "llama-server --port {port}"
    assert "node.gpu-1" in manage("nodes", "list").stdout
    status = manage("models", "status").stdout
    assert "gpu-1" in status
    assert "0/80000000000" in status


def test_node_and_model_bad_input_is_one_line(manage):
    cases = [
        (["nodes", "add", "gpu-1", "--vram-bytes", "0"], "VRAM budget must be at least 1 byte."),
        (["nodes", "add", "bad name", "--vram-bytes", "5"], "name:"),
        (["models", "register", "x", "--engine", "process", "--command", "run"],
         "needs --command with a {port} placeholder"),
        (["models", "load", "nope"], "no model 'nope' in the catalog"),
        (["models", "evict", "nope"], "no model 'nope' in the catalog"),
        (["models", "pin", "nope"], "no model 'nope' in the catalog"),
    ]  # fmt: skip
    for args, expected in cases:
        result = manage(*args)
        assert result.returncode != 0, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert expected in lines[0]
    assert not Node.objects.exists()
