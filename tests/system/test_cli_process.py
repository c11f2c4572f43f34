"""The commands as real processes: exit codes, one-line errors without tracebacks, --version."""


def test_check_config_names_the_key_and_exits_non_zero(tmp_path, cli_process):
    bad = tmp_path / "bad.toml"
    bad.write_text('[smtp]\nport = "twenty-five"\n')
    result = cli_process("check-config", config=bad)
    assert result.returncode == 78
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "smtp.port" in lines[0], lines


def test_broken_toml_is_one_line(tmp_path, cli_process):
    bad = tmp_path / "broken.toml"
    bad.write_text("[smtp\nport = 1\n")
    result = cli_process("ticket", "list", config=bad)
    assert result.returncode == 78
    assert len(result.stderr.decode().strip().splitlines()) == 1
    assert "Traceback" not in result.stderr.decode()


def test_missing_config_file_is_one_line(tmp_path, cli_process):
    result = cli_process("check-config", config=tmp_path / "nowhere.toml")
    assert result.returncode == 78
    assert "no such file" in result.stderr.decode()


def test_real_process_error_has_no_traceback(cli_process):
    result = cli_process("ticket", "show", "SD-1")
    assert result.returncode == 1
    assert result.stderr.decode().strip() == "mailgate: error: no ticket SD-1"


def test_version(cli_process):
    result = cli_process("--version")
    assert result.returncode == 0 and result.stdout.decode().startswith("mailgate ")
