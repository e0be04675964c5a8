from models_mgmt.models import ServedModel


def test_models_register_and_list(manage):
    first = manage("models", "register", "llama-3-8b", "--engine", "openai",
                   "--base-url", "http://127.0.0.1:8001/v1/", "--upstream-model", "meta/llama-3",
                   "--vram-bytes", "16000000000")  # fmt: skip
    local = manage("models", "register", "tiny", "--engine", "local")

    assert first.returncode == 0, first.stderr
    assert local.returncode == 0, local.stderr
    model = ServedModel.objects.get(model_id="llama-3-8b")
    assert (model.base_url, model.upstream_model, model.vram_bytes) == (
        "http://127.0.0.1:8001/v1",
        "meta/llama-3",
        16_000_000_000,
    )
    assert ServedModel.objects.get(model_id="tiny").upstream_model == "smollm2"
    listing = manage("models", "list").stdout
    assert "llama-3-8b" in listing
    assert "tiny" in listing


def test_models_register_bad_input_is_one_line(manage):
    cases = [
        (["llama", "--engine", "openai"], "base_url: The openai engine needs the server's"),
        (["llama", "--engine", "tgi"], "invalid choice: 'tgi'"),
        (
            ["llama", "--engine", "openai", "--base-url", "not a url"],
            "base_url: 'not a url' is not an engine base URL",
        ),
        (["llama", "--engine", "local", "--vram-bytes", "-1"], "VRAM bytes cannot be negative"),
    ]
    for args, expected in cases:
        result = manage("models", "register", *args)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert expected in lines[0]
    assert not ServedModel.objects.exists()
