"""The system tools the deploy files are checked with (make test installs them:
scripts/ensure-deploy-tools)."""

import os
import shutil


def tool(name: str) -> str:
    found = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    assert found, f"{name} is missing: `make test` installs it (scripts/ensure-deploy-tools)"
    return found
