"""Keep the docs true: README.md, compose.yaml, the Dockerfile and the OpenAPI document
are checked against the code they describe (settings, CLI parser, aiohttp routes)."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdp import keys
from cdp.api.app import create_app
from cdp.api.openapi import refs
from cdp.cli import _parser
from cdp.settings import describe, load_settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
OPENAPI_PATH = ROOT / "cdp" / "api" / "openapi.json"
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>&1"}
# Read by load_settings but not a setting itself (it names the TOML file).
# CDP_CONFIG names the settings file; the CDP_SCHEMATHESIS* ones size the conformance run;
# CDP_TEST_WORKERS is how many processes ./dev test runs the suite in; CDP_CHROMIUM,
# CDP_SCREENSHOT_DIR and CDP_README_IMAGES steer the browser tests (tests/browser).
ENV_NOT_IN_DESCRIBE = {
    "CDP_CONFIG",
    "CDP_TEST_WORKERS",
    "CDP_CHROMIUM",
    "CDP_SCREENSHOT_DIR",
    "CDP_README_IMAGES",
    "CDP_SCHEMATHESIS",
    "CDP_SCHEMATHESIS_SEED",
    "CDP_SCHEMATHESIS_EXAMPLES",
}


def parses(args: list[str]) -> bool:
    """True when ``cdp <args>`` is a command line the real CLI parser accepts."""
    try:
        _parser().parse_args(args)
    except SystemExit:
        return False
    return True


def section(text: str, title: str) -> str:
    """The body of the ``## <title>`` section of a Markdown document."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


# ----------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(document, dict)
    return document


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_compose_has_redis_api_and_worker(compose: dict[str, Any]) -> None:
    assert {"redis", "api", "worker"} <= set(compose["services"])


def test_compose_redis_uses_aof_a_volume_and_a_ping_healthcheck(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    command = command_of(redis)
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    volume = redis["volumes"][0].split(":")[0]
    assert volume in compose["volumes"], "redis data must live on a named volume"
    test = redis["healthcheck"]["test"]
    test = test if isinstance(test, list) else shlex.split(test)
    assert "redis-cli" in test and "ping" in test


def test_compose_runs_several_workers(compose: dict[str, Any]) -> None:
    assert compose["services"]["worker"]["deploy"]["replicas"] >= 2


@pytest.mark.parametrize(("service", "subcommand"), [("api", "api"), ("worker", "worker")])
def test_compose_cdp_services_run_a_real_subcommand_against_the_redis_service(
    compose: dict[str, Any], service: str, subcommand: str
) -> None:
    spec = compose["services"][service]
    command = command_of(spec)
    assert command[:2] == ["cdp", subcommand], command
    assert parses(command[1:]), f"`{' '.join(command)}` is not a valid cdp command line"
    assert environment_of(spec)["CDP_REDIS_URL"] == "redis://redis:6379/0"
    assert spec["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "build" in spec or "image" in spec


def test_every_cdp_command_in_compose_is_real(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        command = command_of(spec)
        if command and command[0] == "cdp":
            assert parses(command[1:]), f"service {name}: `{' '.join(command)}` does not parse"


def profile_services(compose: dict[str, Any], profile: str) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if profile in s.get("profiles", [])}


def test_compose_default_services_are_not_in_a_profile(compose: dict[str, Any]) -> None:
    for name in ("redis", "api", "worker"):
        assert "profiles" not in compose["services"][name], name


def test_compose_cluster_profile_runs_three_cluster_nodes_with_aof(
    compose: dict[str, Any],
) -> None:
    cluster = profile_services(compose, "cluster")
    nodes = {n: s for n, s in cluster.items() if command_of(s)[:1] == ["redis-server"]}
    assert len(nodes) == 3, "a Redis Cluster needs at least 3 masters"
    volumes = set()
    for name, node in nodes.items():
        command = command_of(node)
        assert node["image"].startswith("redis:7"), name
        assert command[command.index("--cluster-enabled") + 1] == "yes", name
        assert command[command.index("--appendonly") + 1] == "yes", name
        assert command[command.index("--appendfsync") + 1] == "everysec", name
        assert command[command.index("--hash-max-listpack-entries") + 1] == "128", name
        volume = node["volumes"][0].split(":")[0]
        assert volume in compose["volumes"], name
        volumes.add(volume)
    assert len(volumes) == 3, "each node keeps its AOF and nodes.conf on a volume of its own"


def test_compose_cluster_init_creates_the_slots_over_every_node(compose: dict[str, Any]) -> None:
    cluster = profile_services(compose, "cluster")
    addresses = {  # every node, by the fixed address its nodes.conf peers know it by
        f"{s['networks']['cluster']['ipv4_address']}:6379"
        for s in cluster.values()
        if command_of(s)[:1] == ["redis-server"]
    }
    init = cluster["cluster-init"]
    script = command_of(init)[-1]
    create = next(line for line in script.splitlines() if "--cluster create" in line)
    assert "redis-cli" in create and set(create.split()) >= addresses
    assert "--cluster-yes" in script and "cluster_state:ok" in script
    assert {c["condition"] for c in init["depends_on"].values()} == {"service_healthy"}
    assert init["restart"] == "no"


@pytest.mark.parametrize(
    ("service", "subcommand"), [("cluster-api", "api"), ("cluster-worker", "worker")]
)
def test_compose_cluster_cdp_services_run_against_a_node_after_the_init(
    compose: dict[str, Any], service: str, subcommand: str
) -> None:
    spec = profile_services(compose, "cluster")[service]
    command = command_of(spec)
    assert command[:2] == ["cdp", subcommand] and parses(command[1:]), command
    url = environment_of(spec)["CDP_REDIS_URL"]
    node_addresses = {
        s["networks"]["cluster"]["ipv4_address"]
        for s in compose["services"].values()
        if command_of(s)[:1] == ["redis-server"] and "networks" in s
    }
    assert url.startswith("redis://") and url[len("redis://") :].split(":")[0] in node_addresses
    assert spec["depends_on"] == {"cluster-init": {"condition": "service_completed_successfully"}}


def test_dockerfile_installs_the_package_and_runs_the_api() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert "pip install ." in dockerfile
    (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile, re.M)
    command = json.loads(cmd)
    assert command[:2] == ["cdp", "api"] and parses(command[1:])
    # Everything `pip install .` needs must be copied and not excluded from the context.
    copied = {
        src for line in re.findall(r"^COPY (.+)$", dockerfile, re.M) for src in line.split()[:-1]
    }
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("pyproject.toml", "README.md", "cdp", "workers", "lua"):
        assert needed in copied, f"the Dockerfile does not COPY {needed}"
        assert needed not in ignored or f"!{needed}" in ignored, needed


# ----------------------------------------------------------------------------- OpenAPI


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    document = json.loads(OPENAPI_PATH.read_text())
    assert isinstance(document, dict)
    return document


def registered_routes() -> dict[str, set[str]]:
    app = create_app(load_settings(env={}))
    routes: dict[str, set[str]] = {}
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        assert route.resource is not None
        routes.setdefault(route.resource.canonical, set()).add(route.method.lower())
    return routes


def test_openapi_is_version_3(openapi: dict[str, Any]) -> None:
    assert openapi["openapi"].startswith("3.")
    assert openapi["info"]["title"] and openapi["info"]["version"]


def test_openapi_paths_are_exactly_the_routes_of_the_app(openapi: dict[str, Any]) -> None:
    routes = registered_routes()
    assert set(openapi["paths"]) == set(routes)
    for path, methods in routes.items():
        assert set(openapi["paths"][path]) == methods, path


def test_openapi_documents_the_answers_of_ingest(openapi: dict[str, Any]) -> None:
    post = openapi["paths"]["/cdp/ingest"]["post"]
    assert {"202", "400", "413", "503"} <= set(post["responses"])
    assert "application/json" in post["requestBody"]["content"]


def test_every_openapi_reference_resolves(openapi: dict[str, Any]) -> None:
    for ref in refs(openapi):
        assert ref.startswith("#/"), ref
        node: Any = openapi
        for part in ref[2:].split("/"):
            assert part in node, f"{ref} does not resolve"
            node = node[part]


# ----------------------------------------------------------------------------- README


def config_table() -> dict[str, tuple[str, str]]:
    """key -> (environment variable, default) from the README's configuration table."""
    rows: dict[str, tuple[str, str]] = {}
    for line in section(README, "Configuration").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 4 or not cells[0].startswith("`"):
            continue
        key, env, default = (c.strip("`") for c in cells[:3])
        rows[key] = (env, "" if default == '""' else default)
    return rows


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    table = config_table()
    for key, env, default in describe():
        assert key in table, f"setting {key} is missing from README.md's configuration table"
        assert table[key][0] == env, key
        # Booleans are written as TOML and the environment take them: lower case.
        assert table[key][1].lower() == default.lower(), (key, table[key][1], default)
    assert set(table) == {key for key, _, _ in describe()}, "the table lists unknown keys"


def test_readme_key_layout_is_the_one_of_cdp_keys() -> None:
    after = (keys.__doc__ or "").split("::\n", 1)[1].lstrip("\n")
    layout = re.match(r"(?:    .*\n)+", after)  # the indented literal block
    assert layout, "cdp/keys.py's docstring has no indented key layout"
    expected = [line.strip() for line in layout.group(0).splitlines()]
    block = re.search(r"^```text\n(.*?)^```", section(README, "Key layout"), re.M | re.S)
    assert block, "README.md's Key layout section has no ```text block"
    assert [line.strip() for line in block.group(1).splitlines()] == expected


def test_every_environment_variable_in_the_readme_exists() -> None:
    known = {env for _, env, _ in describe()}
    for name in set(re.findall(r"\bCDP_[A-Z][A-Z0-9_]*", README)):
        assert name in known or name in ENV_NOT_IN_DESCRIBE, f"README.md names unknown {name}"


def test_cdp_config_names_the_settings_file(tmp_path: Path) -> None:
    path = tmp_path / "cdp.toml"
    path.write_text('[cdp]\nwindow-size = "7s"\n')
    assert load_settings(env={"CDP_CONFIG": str(path)}).window_size_ms == 7_000


def shell_commands(markdown: str) -> Iterator[list[str]]:
    """Command lines of the ```sh blocks and the ``$ `` lines of ```console blocks."""
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", markdown, re.M | re.S):
        if lang not in ("sh", "console"):
            continue
        pending = ""
        for line in body.replace("\\\n", " ").splitlines():
            if lang == "console" and not pending:
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            pending += line + "\n"
            try:  # a quoted argument (a JSON body) may span lines: read on until it closes
                tokens = shlex.split(pending, comments=True)
            except ValueError:
                continue
            pending = ""
            yield tokens


def invocations(program: str) -> Iterator[list[str]]:
    """The arguments of every invocation of ``program`` in the README's shell blocks."""
    for tokens in shell_commands(README):
        for i, token in enumerate(tokens):
            if token == program or token.endswith("/" + program):
                args = []
                for arg in tokens[i + 1 :]:
                    if arg in SHELL_OPERATORS:
                        break
                    args.append(arg)
                yield args


def test_every_cdp_command_line_in_the_readme_parses() -> None:
    lines = list(invocations("cdp"))
    assert lines, "README.md shows no cdp command"
    for args in lines:
        assert parses(args), f"README.md: `cdp {' '.join(args)}` does not parse"


def test_readme_cli_section_names_every_subcommand() -> None:
    (subparsers,) = [a for a in _parser()._actions if a.dest == "command"]
    assert subparsers.choices is not None
    cli = section(README, "CLI")
    for name in subparsers.choices:
        assert f"`cdp {name}" in cli, f"README.md's CLI section does not show cdp {name}"


def test_readme_quick_start_is_dev_up_and_dev_test() -> None:
    quick = section(README, "Quick start")
    assert "./dev up" in quick and "./dev test" in quick
    for args in invocations("dev"):
        assert args and args[0] in ("up", "test"), f"README.md: ./dev {args} is not a command"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^\s*\./dev test\b", ci, re.M)
