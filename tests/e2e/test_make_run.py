"""`make run` as a new user types it: the embedded default (SQLite, in-process limiter, local
models) on a new database, then the examples it prints, pasted into a shell."""

import json
import os
import re
import shutil
import subprocess

import httpx

from tests.servers import ROOT, free_port, running


def test_make_run_seeds_serves_and_its_printed_examples_work(tmp_path):
    port = free_port()
    # As a new user types it: no EMAIL_BACKEND either (make run prints emails by itself).
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "DATABASE_URL", "EMAIL_BACKEND")}  # fmt: skip
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        USAGE_NDJSON_PATH=str(tmp_path / "usage.ndjson"),
        HOST="127.0.0.1",
        PORT=str(port),
        MAKEFLAGS="",
    )
    log = tmp_path / "run.log"
    with running(["make", "--no-print-directory", "run"], env=env, log=log, timeout=120,
                 ready_url=f"http://127.0.0.1:{port}/healthz"):  # fmt: skip
        output = log.read_text()
        key = re.search(r"^    (sk-[0-9A-Za-z]+)$", output, re.MULTILINE).group(1)
        curl, python = [
            line.strip()
            for line in output.splitlines()
            if line.startswith("    ") and "Hello!" in line
        ]
        assert shutil.which("curl"), "curl is needed to paste the example"
        curl_result = subprocess.run(curl, shell=True, capture_output=True, text=True, cwd=ROOT,
                                     timeout=120, check=False)  # fmt: skip
        python_result = subprocess.run(python, shell=True, capture_output=True, text=True,
                                       cwd=ROOT, timeout=120, check=False)  # fmt: skip
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models",
                           headers={"Authorization": f"Bearer {key}"}).json()  # fmt: skip
        overview = _portal_overview(f"http://127.0.0.1:{port}", output)

    assert json.loads(curl_result.stdout)["object"] == "chat.completion", curl_result.stdout
    assert python_result.returncode == 0, python_result.stderr
    assert python_result.stdout.strip()
    assert sorted(m["id"] for m in models["data"]) == [
        "multilingual-e5-small",
        "smollm2-135m-instruct",
    ]
    assert "http://127.0.0.1:" in output
    # the printed portal account signs in and sees the two requests just made
    assert "Demo tenant" in overview
    assert "· 2 requests" in overview
    # the embedded default stores usage straight in its database
    ledger = subprocess.run(
        [str(ROOT / ".venv/bin/python"), "manage.py", "shell", "-c",
         "from billing.models import UsageRecord; print(UsageRecord.objects.count())"],
        cwd=ROOT, env=dict(env, EMAIL_BACKEND="django.core.mail.backends.console.EmailBackend"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ledger.stdout.strip().splitlines()[-1] == "2", ledger.stderr


def _portal_overview(base_url: str, output: str) -> str:
    password = re.search(r"user 'demo', password (\S+),", output).group(1)
    with httpx.Client(base_url=base_url) as browser:
        token = browser.get("/portal/login/").cookies["csrftoken"]
        signed_in = browser.post("/portal/login/", data={
            "username": "demo", "password": password, "csrfmiddlewaretoken": token,
        }, headers={"Referer": f"{base_url}/portal/login/"}, follow_redirects=True)  # fmt: skip
        return signed_in.text
