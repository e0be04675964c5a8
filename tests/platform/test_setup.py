"""make's set-up talks only before its long step: scripts/install-llama says it is compiling
llama.cpp and shows the compiler's progress, keeping pip's other output in a log; it says
nothing when the pinned version is installed. The compile itself (minutes) is stood in for by a
`python` whose pip prints what a real build prints."""

import re
import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "install-llama"

STAND_IN = """\
#!/usr/bin/env bash
# A venv's python as install-llama uses it: llama-cpp-python not installed, no cached wheel,
# and a build that prints pip's chatter around the compiler's [n/N] lines.
case "$*" in
  "-c "*) exit 1 ;;
  "-m pip cache list"*) exit 0 ;;
  "-m pip install --verbose"*)
    echo "Collecting llama-cpp-python==0.3.36"
    echo "  Building wheel for llama-cpp-python (pyproject.toml): started"
    echo "  [1/3] Building C object vendor/llama.cpp/ggml/src/ggml.c.o"
    echo "  warning: unused variable"
    echo "  [2/3] Building CXX object vendor/llama.cpp/src/llama.cpp.o"
    echo "  [3/3] Linking CXX shared library bin/libllama.so"
    echo "Successfully installed llama-cpp-python-0.3.36"
    exit ${BUILD_EXIT:-0} ;;
esac
exit 2
"""


def _run(tmp_path, python: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), python],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        timeout=60,
        check=False,
    )


def _stand_in(tmp_path) -> str:
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(STAND_IN)
    python.chmod(0o755)
    return str(python)


def test_a_compile_is_announced_in_one_line_and_shows_only_its_progress(tmp_path):
    result = _run(tmp_path, _stand_in(tmp_path))

    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    assert lines[0].startswith(
        "Building llama.cpp for the local engine: several minutes, only the first time"
    )
    assert [re.sub(r"\s+", " ", line).strip() for line in lines[1:]] == [
        "[1/3] Building C object vendor/llama.cpp/ggml/src/ggml.c.o",
        "[2/3] Building CXX object vendor/llama.cpp/src/llama.cpp.o",
        "[3/3] Linking CXX shared library bin/libllama.so",
    ]
    assert "Successfully installed" in (tmp_path / "venv" / "llama-build.log").read_text()


def test_a_failed_compile_shows_the_end_of_its_log_and_says_where_the_rest_is(tmp_path):
    result = _run(tmp_path, _stand_in(tmp_path), BUILD_EXIT="1")

    assert result.returncode == 1
    assert "Collecting llama-cpp-python" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: building llama-cpp-python failed (exit 1); the whole log is "
        f"{tmp_path / 'venv' / 'llama-build.log'}"
    )


def test_nothing_is_said_when_the_pinned_version_is_installed(tmp_path):
    python = sys.executable  # this venv's python, which has it

    result = _run(tmp_path, python)

    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == ""


def test_gitignore_covers_what_the_documented_commands_write():
    written = [
        ".venv",
        "node_modules",
        "var/db.sqlite3",
        "var/secret_key",
        "var/emails/1.log",
        "test-output/screenshots/x.png",
        "celerybeat-schedule",
        "celerybeat-schedule.db",
        "celerybeat.pid",
        "usage.ndjson",
        "saas_platform.egg-info/PKG-INFO",
        ".import_linter_cache/x",
        ".pytest_cache/x",
        ".ruff_cache/x",
        ".hypothesis/x",
    ]

    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *written],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert ignored.stdout.splitlines() == written, ignored.stderr
