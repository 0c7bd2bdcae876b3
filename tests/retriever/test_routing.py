"""Routing is pure given the group description: partition of a user, owner of a partition."""

from __future__ import annotations

from types import SimpleNamespace as NS

from kafka.partitioner.default import DefaultPartitioner

from longretriever.retriever.routing import OwnershipMap, client_id_for, ownership_from_group, partition_for
from longretriever.core.codec import encode_key


def test_partition_matches_kafka_default_partitioner():
    parts = list(range(7))
    for user in [0, 1, 7, 42, 10**12, 2**63 - 1]:
        assert partition_for(user, 7) == DefaultPartitioner()(encode_key(user), parts, parts)


def test_ownership_from_group_ignores_foreign_members_and_topics():
    members = [
        NS(client_id=client_id_for("10.0.0.1:50051"),
           member_assignment=NS(assignment=[("user-events", [0, 2]), ("other", [1])])),
        NS(client_id=client_id_for("10.0.0.2:50051"), member_assignment=NS(assignment=[("user-events", [1])])),
        NS(client_id="some-other-app", member_assignment=NS(assignment=[("user-events", [3])])),
    ]
    m = ownership_from_group(NS(members=members), "user-events", 4)
    assert m.owners == {0: "10.0.0.1:50051", 2: "10.0.0.1:50051", 1: "10.0.0.2:50051"}
    users = {p: next(u for u in range(1000) if partition_for(u, 4) == p) for p in range(4)}
    assert m.owner_of(users[1]) == "10.0.0.2:50051"
    assert m.owner_of(users[3]) is None
    assert OwnershipMap(0, {}).owner_of(5) is None
