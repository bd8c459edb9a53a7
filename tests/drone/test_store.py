"""The drone's SQLite store, on a real file: backends, and the outbox of state events."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from sailplane.drone.store import DroneStore
from sailplane.protocol import SpawnBackend
from sailplane.runtime.base import BackendAddress
from sailplane.spec import ExecutorConfig, KeyConfig
from sailplane.state import BackendState, BackendStatus, TerminationReason

S = BackendStatus


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "drone.sqlite3"


@pytest.fixture
def store(path: Path) -> Iterator[DroneStore]:
    opened = DroneStore(path)
    yield opened
    opened.close()


def spawn_of(backend_id: str, key: str = "doc-42") -> SpawnBackend:
    return SpawnBackend(
        backend_id=backend_id,
        key=KeyConfig(name=key, namespace="editor"),
        executable=ExecutorConfig.model_validate({
            "image": "sailplane/static:latest",
            "volume_mounts": [{"type": "tmpfs", "target": "/tmp", "size_bytes": 1024}],
        }),
        secret_token="s3cret",
    )


def state(status: BackendStatus, time: int = 1, **extra: object) -> BackendState:
    return BackendState.model_validate({"status": status, "time": time, **extra})


def test_a_new_backend_is_scheduled_and_a_resend_is_ignored(store):
    spawn = spawn_of("b-one")
    assert store.add(spawn) is True
    assert store.add(spawn_of("b-one", key="other")) is False  # the first one stays
    record = store.get("b-one")
    assert record is not None
    assert record.spawn == spawn
    assert (record.status, record.address, record.stop_reason) == (S.SCHEDULED, None, None)
    assert store.pending() == []  # `scheduled` is the controller's, never sent back


def test_an_unknown_backend_has_no_record(store):
    assert store.get("b-nobody") is None


def test_every_state_goes_to_the_outbox_in_order_with_the_status(store):
    store.add(spawn_of("b-one"))
    store.add(spawn_of("b-two"))
    steps = [("b-one", S.LOADING), ("b-two", S.LOADING), ("b-one", S.STARTING),
             ("b-two", S.STARTING), ("b-one", S.WAITING)]
    seqs = [store.record(backend_id, state(status, time=i)) for i, (backend_id, status)
            in enumerate(steps)]

    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    pending = store.pending()
    assert [(event.seq, event.backend_id, event.state.status) for event in pending] == [
        (seq, backend_id, status) for seq, (backend_id, status) in zip(seqs, steps, strict=True)
    ]
    assert [event.state.time for event in pending] == list(range(len(steps)))
    record_one, record_two = store.get("b-one"), store.get("b-two")
    assert record_one is not None and record_one.status is S.WAITING
    assert record_two is not None and record_two.status is S.STARTING


def test_a_terminated_event_keeps_its_reason_exit_code_and_message(store):
    store.add(spawn_of("b-one"))
    store.record("b-one", state(S.TERMINATED, reason=TerminationReason.EXITED, exit_code=3,
                                message="bye"))
    [event] = store.pending()
    assert event.state == state(S.TERMINATED, reason=TerminationReason.EXITED, exit_code=3,
                                message="bye")


def test_pending_pages_after_a_sequence_number(store):
    store.add(spawn_of("b-one"))
    seqs = [store.record("b-one", state(status)) for status in (S.LOADING, S.STARTING, S.WAITING)]
    assert [event.seq for event in store.pending(after=seqs[0])] == seqs[1:]
    assert [event.seq for event in store.pending(limit=2)] == seqs[:2]
    assert store.pending(after=seqs[-1]) == []


def test_ack_forgets_what_the_controller_stored_and_keeps_the_rest(store):
    store.add(spawn_of("b-one"))
    seqs = [store.record("b-one", state(status)) for status in (S.LOADING, S.STARTING, S.WAITING)]
    store.ack(seqs[1])
    assert [event.seq for event in store.pending()] == seqs[2:]
    store.ack(seqs[0])  # an old ack changes nothing
    assert [event.seq for event in store.pending()] == seqs[2:]
    store.ack(seqs[2])
    assert store.pending() == []
    record = store.get("b-one")
    assert record is not None and record.status is S.WAITING  # acks never touch the status
    # Sequence numbers are never reused, even after the outbox was emptied.
    assert store.record("b-one", state(S.READY)) > seqs[-1]


def test_events_survive_a_restart_until_acknowledged(path):
    first = DroneStore(path)
    first.add(spawn_of("b-one"))
    first.set_address("b-one", BackendAddress("127.0.0.1", 32768))
    seqs = [first.record("b-one", state(status)) for status in (S.LOADING, S.STARTING)]
    first.close()

    second = DroneStore(path)
    try:
        assert [event.seq for event in second.pending()] == seqs
        record = second.get("b-one")
        assert record is not None and record.address == ("127.0.0.1", 32768)
        second.ack(seqs[0])
    finally:
        second.close()

    third = DroneStore(path)
    try:
        assert [event.seq for event in third.pending()] == seqs[1:]
        assert third.add(spawn_of("b-one")) is False  # still known after restarts
    finally:
        third.close()


def test_address_and_stop_reason_are_kept(store):
    store.add(spawn_of("b-one"))
    store.set_address("b-one", BackendAddress("127.0.0.1", 40000))
    store.set_stop_reason("b-one", TerminationReason.SWEPT)
    record = store.get("b-one")
    assert record is not None
    assert record.address == ("127.0.0.1", 40000)
    assert record.stop_reason is TerminationReason.SWEPT


def test_unfinished_lists_backends_not_yet_terminated_oldest_first(store):
    for backend_id in ("b-three", "b-one", "b-two"):
        store.add(spawn_of(backend_id))
    store.record("b-one", state(S.TERMINATED, reason=TerminationReason.ERROR))
    store.record("b-two", state(S.READY))
    unfinished = store.unfinished()
    assert [record.backend_id for record in unfinished] == ["b-three", "b-two"]
    assert [record.status for record in unfinished] == [S.SCHEDULED, S.READY]


def test_a_record_that_fails_halfway_changes_neither_the_status_nor_the_outbox(store, path):
    store.add(spawn_of("b-one"))
    store.record("b-one", state(S.LOADING))
    # Make the outbox insert fail *after* the status update in the same transaction.
    other = sqlite3.connect(str(path), isolation_level=None)
    other.execute("CREATE TRIGGER refuse BEFORE INSERT ON outbox BEGIN "
                  "SELECT RAISE(ABORT, 'outbox refused'); END")
    try:
        with pytest.raises(sqlite3.IntegrityError, match="outbox refused"):
            store.record("b-one", state(S.STARTING))
        record = store.get("b-one")
        assert record is not None and record.status is S.LOADING
        assert [event.state.status for event in store.pending()] == [S.LOADING]
    finally:
        other.execute("DROP TRIGGER refuse")
        other.close()
    store.record("b-one", state(S.STARTING))  # and the store still works afterwards
    assert [event.state.status for event in store.pending()] == [S.LOADING, S.STARTING]


def test_the_database_is_in_wal_mode(store, path):
    reader = sqlite3.connect(str(path))
    try:
        assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        reader.close()
