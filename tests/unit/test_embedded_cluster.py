"""The pure parts of ``cdp.embedded_cluster``: the slot split, the port choice, the
shape checks, and a data dir it refuses to wipe (no Redis started)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from cdp.embedded_cluster import (
    BUS_PORT_OFFSET,
    CLUSTER_SLOTS,
    EmbeddedCluster,
    choose_ports,
    slot_ranges,
)
from cdp.errors import RedisServerError, SettingsError


@pytest.mark.parametrize("masters", [3, 4, 5, 7, 16])
def test_slot_ranges_cover_every_slot_once_in_order(masters: int) -> None:
    ranges = slot_ranges(masters)
    assert len(ranges) == masters
    assert ranges[0][0] == 0 and ranges[-1][1] == CLUSTER_SLOTS - 1
    for (_, last), (first, _) in zip(ranges, ranges[1:], strict=False):
        assert first == last + 1
    sizes = [last - first + 1 for first, last in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_slot_ranges_of_three_masters_are_redis_clis() -> None:
    assert slot_ranges(3) == [(0, 5460), (5461, 10922), (10923, 16383)]


def test_choose_ports_skips_a_port_whose_bus_port_is_taken() -> None:
    first = choose_ports(1)[0]
    with socket.socket() as held:  # the bus port of the first candidate
        held.bind(("127.0.0.1", first + BUS_PORT_OFFSET))
        ports = choose_ports(3, first)
    assert first not in ports and len(set(ports)) == 3
    reserved = set(ports) | {p + BUS_PORT_OFFSET for p in ports}
    assert len(reserved) == 6, "no node's port is another's bus port"
    assert all(p + BUS_PORT_OFFSET <= 65535 for p in ports)


def test_choose_ports_refuses_ports_whose_bus_port_does_not_exist() -> None:
    with pytest.raises(RedisServerError, match="--redis-port"):
        choose_ports(3, 65535 - BUS_PORT_OFFSET - 1)


@pytest.mark.parametrize(
    ("masters", "replicas", "message"),
    [(2, 0, "at least 3 masters"), (0, 0, "at least 3 masters"), (3, -1, "0 or more")],
)
def test_a_cluster_of_a_bad_shape_is_a_settings_error(
    tmp_path: Path, masters: int, replicas: int, message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        EmbeddedCluster(tmp_path, masters, replicas)


def test_nodes_without_their_layout_file_are_never_wiped(tmp_path: Path) -> None:
    node = tmp_path / "cluster" / "node-7000"
    node.mkdir(parents=True)
    (node / "appendonly.aof").write_text("data")
    with pytest.raises(RedisServerError, match="no cluster.json"):
        EmbeddedCluster(tmp_path, 3).start()
    assert (node / "appendonly.aof").read_text() == "data"
