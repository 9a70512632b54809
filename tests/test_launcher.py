"""./cardio passes exit status, stdout and stderr through and resolves paths from any directory."""
import json
import subprocess

from conftest import REPO

LAUNCHER = str(REPO / "cardio")


def test_exit_status_and_streams_pass_through(tmp_path):
    result = subprocess.run([LAUNCHER, "exec", "sh", "-c", "echo to-out; echo to-err >&2; exit 7"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (7, "to-out\n", "to-err\n")


def test_cli_usage_error_is_exit_2(tmp_path):
    result = subprocess.run([LAUNCHER, "no-such-command"], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 2
    assert "No such command" in result.stderr


def test_relative_output_path_is_relative_to_the_callers_directory(tmp_path):
    result = subprocess.run([LAUNCHER, "data", "synth", "--out", "out/data", "--n", "3",
                             "--size", "128"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["out"] == str(tmp_path / "out" / "data")
    assert list((tmp_path / "out" / "data" / "span-1").glob("*/*.tfrecord.gz"))


def test_every_command_has_help():
    from click.testing import CliRunner

    from cardio.cli import main

    def walk(command, path):
        yield path
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, path + [name])

    for path in walk(main, []):
        result = CliRunner().invoke(main, path + ["--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output
