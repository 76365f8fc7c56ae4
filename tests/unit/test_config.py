"""Configuration layers and the messages a wrong value gets."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tidings.cli import main
from tidings.config import OPTIONS, Config, load_config, parse_duration
from tidings.errors import ConfigError

ISSUE_EXAMPLE = """
[channels]
presence = false
[channels.namespaces.chat]
history_size = 100
history_ttl = "300s"
force_recovery = true
presence = true
join_leave = true
force_push_join_leave = true
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
allow_history_for_subscriber = true
allow_presence_for_subscriber = true
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tidings.toml"
    path.write_text(text)
    return path


def test_defaults_serve_the_demo_on_localhost() -> None:
    config = load_config(env={})
    assert (config.host, config.port, config.broker) == ("127.0.0.1", 8000, "memory")
    assert config.demo_enabled and config.allow_anonymous
    assert "demo" in config.namespaces()


def test_a_secret_turns_the_demo_and_anonymous_access_off() -> None:
    config = load_config(env={"TIDINGS_TOKEN_HMAC_SECRET": "s" * 32})
    assert not config.demo_enabled and not config.allow_anonymous
    assert "demo" not in config.namespaces()


def test_the_issue_example_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ISSUE_EXAMPLE), env={})
    chat = config.channels.namespaces["chat"]
    assert chat.history_size == 100 and chat.history_ttl == 300.0 and chat.force_recovery
    assert config.channels.presence is False


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    path = write(tmp_path, 'port = 9000\nhost = "0.0.0.0"\napi_key = "from-file"\n')
    env = {
        "TIDINGS_PORT": "9100",
        "TIDINGS_API_KEY": "from-env",
        "TIDINGS_ALLOWED_ORIGINS": "https://a.example, https://b.example",
    }
    config = load_config(path, env=env, overrides={"port": 9200})
    assert config.host == "0.0.0.0"
    assert config.api_key == "from-env"
    assert config.port == 9200
    assert config.allowed_origins == ["https://a.example", "https://b.example"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('port = "eighty"', "port: expected an integer, got 'eighty'"),
        ("prot = 1", "prot: unknown option"),
        (
            '[channels.namespaces.chat]\nhistory_ttl = "soon"',
            "channels.namespaces.chat.history_ttl: expected a duration",
        ),
        (
            "[channels.namespaces.chat]\nhistroy_size = 3",
            "channels.namespaces.chat.histroy_size: unknown option",
        ),
        (
            '[channels.namespaces.chat]\npresence = "yes"',
            "channels.namespaces.chat.presence: expected `bool`, got `str`",
        ),
        (
            "[channels.namespaces.chat]\nhistory_size = 5",
            "history needs both history_size and history_ttl",
        ),
        ("[channels.namespaces.x]\npresence = true", "channels.namespaces.x: expected a name"),
        ("workers = 2", "workers: more than one worker needs a shared broker"),
        ("port = 70000", "port: expected 0-65535"),
        ("this is not toml", "is not valid TOML"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, text), env={})
    assert message.replace("`", "") in str(raised.value).replace("`", "")


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="TIDINGS_PING_INTERVAL: expected a duration"):
        load_config(env={"TIDINGS_PING_INTERVAL": "often"})


def test_durations() -> None:
    assert parse_duration("300s", "k") == 300.0
    assert parse_duration("250ms", "k") == 0.25
    assert parse_duration("5m", "k") == 300.0
    assert parse_duration("1h", "k") == 3600.0
    assert parse_duration(12, "k") == 12.0
    for bad in ("", "-1s", "1w", True, -3):
        with pytest.raises(ConfigError):
            parse_duration(bad, "k")


def test_cli_exits_2_with_one_message(tmp_path: Path) -> None:
    path = write(tmp_path, '[channels.namespaces.chat]\nhistory_ttl = "soon"\n')
    result = CliRunner().invoke(main, ["serve", "--config", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line]
    assert lines == [
        "tidings: configuration error: channels.namespaces.chat.history_ttl: expected a duration "
        'like "30s", "250ms" or "5m", got \'soon\''
    ]


def test_cli_missing_file_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--config", str(tmp_path / "missing.toml")])
    assert result.exit_code == 2 and "not found" in result.output


def test_serve_help_documents_every_option() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in OPTIONS:
        assert option.flag in result.output, option.name
        assert option.env in result.output, option.name


def test_configuration_doc_lists_every_option() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    for option in OPTIONS:
        assert f"`{option.name}`" in doc, option.name
    for field in Config().channels.__struct_fields__:
        if field != "namespaces":
            assert f"`{field}`" in doc, field


def test_token_command_signs_with_the_configured_secret() -> None:
    import jwt

    secret = "k" * 32
    result = CliRunner().invoke(
        main,
        ["token", "--user", "alice", "--ttl", "60", "--channels", "a,b", "--info", '{"n":1}'],
        env={"TIDINGS_TOKEN_HMAC_SECRET": secret},
    )
    assert result.exit_code == 0, result.output
    claims = jwt.decode(result.output.strip(), secret, algorithms=["HS256"])
    assert (
        claims["sub"] == "alice" and claims["channels"] == ["a", "b"] and claims["info"] == {"n": 1}
    )
    assert claims["exp"] - claims["iat"] == 60


def test_token_command_without_secret_exits_2() -> None:
    result = CliRunner().invoke(
        main, ["token", "--user", "alice"], env={"TIDINGS_TOKEN_HMAC_SECRET": ""}
    )
    assert result.exit_code == 2 and "no token secret" in result.output
