from tenants import apikeys, services
from tenants.models import Tenant


def test_demo_seed_creates_tenant_and_key_once_and_prints_examples(manage):
    first = manage("demo_seed", "--base-url", "http://127.0.0.1:8123")

    assert first.returncode == 0, first.stderr
    keys = [word for word in first.stdout.split() if word.startswith("sk-") and len(word) > 20]
    key = keys[0].strip("'\"")
    assert services.tenant_for_key(key).tenant.slug == "demo"
    assert 'curl -s http://127.0.0.1:8123/v1/chat/completions -H "Authorization: Bearer sk-' in (
        first.stdout
    )
    assert "OpenAI(base_url='http://127.0.0.1:8123/v1'" in first.stdout

    second = manage("demo_seed", "--base-url", "http://127.0.0.1:8123")

    assert second.returncode == 0
    assert Tenant.objects.count() == 1
    assert key not in second.stdout
    assert "$OPENAI_API_KEY" in second.stdout
    assert apikeys.KEY_PREFIX + keys[0][3:11] not in second.stdout
