"""The broker role's Redis ACL users: the files it renders and what the rules allow.

The templates are rendered by Ansible itself (one playbook on localhost, the roles' defaults plus
test values), so the filters are Ansible's. What a rule allows is worked out from the categories
Redis 7.0.15 (Debian 12's redis-server) gives each command (`COMMAND INFO`), applied left to right
the way Redis does. molecule/broker and molecule/broker_ha check the same users on real servers.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

from helpers import REPO, run_playbook

PASSWORDS = {
    "broker_admin_password": "AdminPassw0rdAdminPassw0rd",
    "broker_celery_password": "CeleryPassw0rdCeleryPassw0rd",
    "broker_replication_password": "ReplPassw0rdReplPassw0rd",
    "broker_sentinel_peer_password": "PeerPassw0rdPeerPassw0rd",
    "broker_password": "LegacyRedisPassw0rd",
    "broker_sentinel_password": "LegacySentinelPassw0rd",
}
AIRFLOW = {
    "airflow_common_broker_password": PASSWORDS["broker_celery_password"],
    "airflow_common_broker_sentinel_password": PASSWORDS["broker_celery_password"],
    "airflow_common_broker_sentinels": ["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"],
    "airflow_common_broker_host": "10.0.0.1",
    "airflow_common_db_host": "10.0.0.9",
    "airflow_common_db_password": "x" * 24,
    "airflow_common_celery_db_password": "c" * 24,
    "airflow_common_fernet_key": "k" * 44,
    "airflow_common_jwt_secret": "j" * 48,
    "airflow_common_api_secret_key": "s" * 48,
    "airflow_common_api_url": "http://10.0.0.10:8080",
}
TEMPLATES = {
    "users.acl": "roles/broker/templates/users.acl.j2",
    "sentinel-users.acl": "roles/broker/templates/sentinel-users.acl.j2",
    "airflow.cfg": "roles/airflow_common/templates/airflow.cfg.j2",
}

# Redis 7.0.15's categories (COMMAND INFO) of the commands these tests name.
CATEGORIES = {
    "lpush": {"fast", "list", "write"},
    "rpush": {"fast", "list", "write"},
    "rpop": {"fast", "list", "write"},
    "brpop": {"blocking", "list", "slow", "write"},
    "llen": {"fast", "list", "read"},
    "sadd": {"fast", "set", "write"},
    "srem": {"fast", "set", "write"},
    "smembers": {"read", "set", "slow"},
    "zadd": {"fast", "sortedset", "write"},
    "zrem": {"fast", "sortedset", "write"},
    "zrevrangebyscore": {"read", "slow", "sortedset"},
    "hset": {"fast", "hash", "write"},
    "hget": {"fast", "hash", "read"},
    "hdel": {"fast", "hash", "write"},
    "hlen": {"fast", "hash", "read"},
    "del": {"keyspace", "slow", "write"},
    "exists": {"fast", "keyspace", "read"},
    "set": {"slow", "string", "write"},
    "multi": {"fast", "transaction"},
    "exec": {"slow", "transaction"},
    "watch": {"fast", "transaction"},
    "unwatch": {"fast", "transaction"},
    "discard": {"fast", "transaction"},
    "evalsha": {"scripting", "slow"},
    "publish": {"fast", "pubsub"},
    "subscribe": {"pubsub", "slow"},
    "psubscribe": {"pubsub", "slow"},
    "unsubscribe": {"pubsub", "slow"},
    "punsubscribe": {"pubsub", "slow"},
    "ping": {"connection", "fast"},
    "auth": {"connection", "fast"},
    "hello": {"connection", "fast"},
    "select": {"connection", "fast"},
    "flushall": {"dangerous", "keyspace", "slow", "write"},
    "flushdb": {"dangerous", "keyspace", "slow", "write"},
    "replicaof": {"admin", "dangerous", "slow"},
    "slaveof": {"admin", "dangerous", "slow"},
    "shutdown": {"admin", "dangerous", "slow"},
    "debug": {"admin", "dangerous", "slow"},
    "monitor": {"admin", "dangerous", "slow"},
    "keys": {"dangerous", "keyspace", "read", "slow"},
    "eval": {"scripting", "slow"},
    "info": {"dangerous", "slow"},
    "role": {"admin", "dangerous", "fast"},
    "swapdb": {"dangerous", "fast", "keyspace", "write"},
    "save": {"admin", "dangerous", "slow"},
    "bgsave": {"admin", "dangerous", "slow"},
    "sort": {"dangerous", "list", "set", "slow", "sortedset", "write"},
    "migrate": {"dangerous", "keyspace", "slow", "write"},
    "failover": {"admin", "dangerous", "slow"},
    "client|setname": {"connection", "slow"},
    "client|kill": {"admin", "connection", "dangerous", "slow"},
    "client|list": {"admin", "connection", "dangerous", "slow"},
    "client|pause": {"admin", "connection", "dangerous", "slow"},
    "config|get": {"admin", "dangerous", "slow"},
    "config|set": {"admin", "dangerous", "slow"},
    "config|rewrite": {"admin", "dangerous", "slow"},
    "acl|list": {"admin", "dangerous", "slow"},
    "acl|setuser": {"admin", "dangerous", "slow"},
    "script|load": {"scripting", "slow"},
    "script|flush": {"scripting", "slow"},
    "script|kill": {"scripting", "slow"},
    "module|list": {"admin", "dangerous", "slow"},
    "module|load": {"admin", "dangerous", "slow"},
    "function|flush": {"scripting", "slow", "write"},
    "function|load": {"scripting", "slow", "write"},
}
# What kombu's Redis transport (5.6) and redis-py (6.x) send on a Sentinel-managed connection
# (roles/broker/defaults/main.yml, broker_celery_acl_rules, says where each comes from).
KOMBU_NEEDS = [
    "auth", "hello", "ping", "select", "client|setname",
    "lpush", "rpush", "rpop", "brpop", "llen",
    "sadd", "srem", "smembers",
    "zadd", "zrem", "zrevrangebyscore", "hset", "hget", "hdel", "hlen",
    "del", "exists", "set",
    "multi", "exec", "watch", "unwatch", "discard",
    "evalsha", "script|load",
    "publish", "subscribe", "psubscribe", "unsubscribe", "punsubscribe",
]  # fmt: skip
CELERY_REFUSED = [
    "flushall", "flushdb", "config|get", "config|set", "config|rewrite", "replicaof", "slaveof",
    "shutdown", "debug", "monitor", "acl|list", "acl|setuser", "client|kill", "client|list",
    "client|pause", "keys", "module|list", "module|load", "eval", "script|flush", "script|kill",
    "function|flush", "function|load", "info", "role", "swapdb", "save", "bgsave", "sort", "migrate",
    "failover",
]  # fmt: skip


def allowed(rules: list[str], command: str) -> bool:
    """Whether ACL rules (applied left to right, as Redis does) allow `command` ("name" or
    "container|sub"), for the commands of CATEGORIES."""
    container = command.split("|")[0]
    verdict = False
    for rule in rules:
        if rule in ("+@all", "allcommands"):
            verdict = True
        elif rule in ("-@all", "nocommands", "reset"):
            verdict = False
        elif rule.startswith(("+@", "-@")):
            if rule[2:] in CATEGORIES[command]:
                verdict = rule[0] == "+"
        elif rule.startswith(("+", "-")) and rule[1:].lower() in (command, container):
            verdict = rule[0] == "+"
    return verdict


def user_lines(text: str) -> dict[str, list[str]]:
    """An ACL file's users: name -> rules (everything after `user <name>`)."""
    users = {}
    for line in text.splitlines():
        words = line.split()
        assert words[0] == "user", f"not a user line: {line!r}"
        assert len(words) > 2, f"a user without rules: {line!r}"
        users[words[1]] = words[2:]
    return users


def _render(tmp_path: Path, **extra) -> dict[str, str]:
    out = tmp_path / "out"
    out.mkdir()
    variables = {
        **yaml.safe_load((REPO / "roles/broker/defaults/main.yml").read_text()),
        **yaml.safe_load((REPO / "roles/airflow_common/defaults/main.yml").read_text()),
        # The role's own computed values the template reads (the DB URL's query string).
        **yaml.safe_load((REPO / "roles/airflow_common/vars/main.yml").read_text()),
        **PASSWORDS,
        **AIRFLOW,
        "broker_sentinel_enabled": True,
        "broker_nodes": ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
        **extra,
    }
    # Defaults that need facts or an inventory do not matter to these templates.
    for name in ("broker_announce_address", "broker_container_workarounds", "airflow_common_secrets_file"):
        variables.pop(name, None)
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    (tmp_path / "hosts.yml").write_text("all:\n  hosts:\n    localhost: {ansible_connection: local}\n")
    tasks = [
        {
            "name": f"Render {name}",
            "ansible.builtin.copy": {
                "content": f"{{{{ lookup('ansible.builtin.template', '{REPO / src}') }}}}",
                "dest": str(out / name),
                "mode": "0600",
            },
        }
        for name, src in TEMPLATES.items()
    ]
    playbook = tmp_path / "render.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    proc = run_playbook(tmp_path / "hosts.yml", str(playbook), "-e", f"@{tmp_path / 'vars.json'}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {name: (out / name).read_text() for name in TEMPLATES}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, str]:
    return _render(tmp_path_factory.mktemp("acl"))


@pytest.fixture(scope="module")
def rendered_legacy(tmp_path_factory) -> dict[str, str]:
    return _render(tmp_path_factory.mktemp("acl-legacy"), broker_legacy_default_user=True)


def sha(password: str) -> str:
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def test_acl_files_hold_only_user_lines_and_no_password_in_clear(rendered):
    # Redis 7.0 refuses to start on an ACL file with anything else, a comment included.
    for name in ("users.acl", "sentinel-users.acl"):
        text = rendered[name]
        assert text.endswith("\n")
        assert all(line.startswith("user ") for line in text.splitlines()), text
        for password in PASSWORDS.values():
            assert password not in text, f"{name} holds a password in clear"


def test_every_user_has_its_own_password_hash(rendered):
    redis = user_lines(rendered["users.acl"])
    sentinel = user_lines(rendered["sentinel-users.acl"])
    assert set(redis) == {"default", "admin", "celery", "replica", "sentinel"}
    assert set(sentinel) == {"default", "admin", "celery", "sentinel"}
    expect = {
        "admin": "broker_admin_password",
        "celery": "broker_celery_password",
        "replica": "broker_replication_password",
        "sentinel": "broker_sentinel_peer_password",
    }
    for users in (redis, sentinel):
        for user, rules in users.items():
            hashes = [r for r in rules if r.startswith("#")]
            if user == "default":
                assert hashes == []
                continue
            assert hashes == [sha(PASSWORDS[expect[user]])], user
            # Each user line starts from nothing, so a rerun or a changed rule never adds up.
            assert rules[:2] == ["reset", "on"], user


def test_the_default_user_is_off_but_keeps_its_commands_on_redis(rendered):
    """Off: no login as it, NOAUTH without a login. Its commands stay: Redis 7.0 replays MULTI/EXEC
    from the append-only file as the default user and re-checks its rights (redis/redis#14541)."""
    rules = user_lines(rendered["users.acl"])["default"]
    assert rules[:2] == ["reset", "off"]
    assert not [r for r in rules if r.startswith((">", "#")) or r == "nopass"]
    assert allowed(rules, "hset")
    assert allowed(rules, "exec")
    assert user_lines(rendered["sentinel-users.acl"])["default"] == ["reset", "off"]


def test_the_legacy_default_user_has_the_pre_acl_passwords(rendered_legacy):
    redis = user_lines(rendered_legacy["users.acl"])["default"]
    sentinel = user_lines(rendered_legacy["sentinel-users.acl"])["default"]
    assert redis[:3] == ["reset", "on", sha(PASSWORDS["broker_password"])]
    assert sentinel[:3] == ["reset", "on", sha(PASSWORDS["broker_sentinel_password"])]
    assert "+@all" in redis
    assert "+@all" in sentinel


@pytest.mark.parametrize("command", KOMBU_NEEDS)
def test_celery_may_run_what_kombu_needs(rendered, command):
    rules = user_lines(rendered["users.acl"])["celery"]
    assert allowed(rules, command), f"{command} is refused to Celery's user: {' '.join(rules)}"


@pytest.mark.parametrize("command", CELERY_REFUSED)
def test_celery_may_not_run_what_changes_or_stops_redis(rendered, command):
    rules = user_lines(rendered["users.acl"])["celery"]
    assert not allowed(rules, command), f"{command} is allowed to Celery's user: {' '.join(rules)}"


def test_replication_and_sentinel_users_on_redis(rendered):
    users = user_lines(rendered["users.acl"])
    replica = users["replica"]
    rules = [r for r in replica if not r.startswith("#")]
    assert rules == ["reset", "on", "-@all", "+psync", "+replconf", "+ping"]
    sentinel = users["sentinel"]
    # Redis' documented set for Sentinel, its channel only, no keys.
    documented = "+multi +slaveof +ping +exec +subscribe +config|rewrite +role +publish +info +client|setname"
    for rule in [*documented.split(), "+client|kill", "+script|kill", "&__sentinel__:hello"]:
        assert rule in sentinel
    assert not [r for r in sentinel if r.startswith("~") or r in ("allkeys", "allchannels", "&*", "+@all")]
    for command in ("flushall", "shutdown", "config|set", "set", "hset", "acl|setuser"):
        assert not allowed(sentinel, command), command
        assert not allowed(replica, command), command


def test_sentinel_users(rendered):
    users = user_lines(rendered["sentinel-users.acl"])
    celery = [r for r in users["celery"] if r.startswith(("+", "-"))]
    assert celery[0] == "-@all"
    granted = {r[1:].lower() for r in celery[1:]}
    assert granted >= {"sentinel|get-master-addr-by-name", "sentinel|masters", "sentinel|slaves", "ping"}
    assert all(g.startswith(("sentinel|", "ping", "client|setname")) for g in granted), granted
    refused = {"sentinel|failover", "sentinel|set", "sentinel|remove", "sentinel|reset", "sentinel"}
    assert not granted & refused
    peer = users["sentinel"]
    assert "&__sentinel__:hello" in peer
    assert {r for r in peer if r.startswith("+")} == {
        "+ping",
        "+publish",
        "+client|setname",
        "+sentinel|is-master-down-by-addr",
    }


def test_airflow_logs_in_as_the_celery_user(rendered):
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read_string(rendered["airflow.cfg"])
    urls = cfg.get("celery", "broker_url").split(";")
    assert len(urls) == 3
    for url in urls:
        match = re.fullmatch(r"sentinel://([^:@]+):([^@]+)@(10\.0\.0\.\d):26379/0", url)
        assert match, url
        assert (match[1], unquote(match[2])) == ("celery", PASSWORDS["broker_celery_password"])
    kwargs = json.loads(cfg.get("celery_broker_transport_options", "sentinel_kwargs"))
    assert kwargs["username"] == "celery"
    assert kwargs["password"] == PASSWORDS["broker_celery_password"]
