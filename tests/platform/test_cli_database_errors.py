import subprocess
import sys

from tests.conftest import ROOT


def test_a_command_on_an_unmigrated_database_says_so_in_one_line(tmp_path, subprocess_env):
    env = dict(subprocess_env, DATABASE_URL=f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    result = subprocess.run([sys.executable, "manage.py", "models", "list"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "manage.py migrate" in result.stderr
    assert "Traceback" not in result.stderr
