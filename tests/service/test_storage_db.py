"""Data directory, SQL models on SQLite and PostgreSQL, API-key hashing and scopes."""

from __future__ import annotations

import hashlib
from datetime import UTC

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from service.auth import SCOPES, Principal, authenticate, create_key, list_keys, parse_scopes, revoke_key
from service.db import create_tables, make_engine, make_sessionmaker, ping, session_scope
from service.errors import Unauthorized
from service.models_db import ApiKey, Job, JobState, Segmentation, Volume
from service.storage import Storage, atomic_write_bytes, is_valid_id, new_id


def test_ids_are_server_made_hex():
    ids = {new_id() for _ in range(100)}
    assert len(ids) == 100 and all(is_valid_id(i) for i in ids)
    for bad in ("../../etc", "a" * 31, "A" * 32, "0" * 32 + "/", "", "..", "0" * 31 + "g"):
        assert not is_valid_id(bad)


def test_area_dir_and_resolve_refuse_escapes(tmp_path):
    storage = Storage(tmp_path)
    storage.ensure()
    good = new_id()
    assert storage.area_dir("volumes", good) == tmp_path / "volumes" / good
    for bad_area, bad_id in (("volumes", "../x"), ("volumes", "..%2F"), ("../etc", good)):
        with pytest.raises(ValueError):
            storage.area_dir(bad_area, bad_id)
    with pytest.raises(ValueError):
        storage.resolve("../outside.txt")


def test_staging_is_removed_on_failure_and_publish_is_a_rename(tmp_path):
    storage = Storage(tmp_path)
    storage.ensure()
    with pytest.raises(RuntimeError), storage.staging() as stage:
        (stage / "part").write_bytes(b"x")
        raise RuntimeError("upload failed")
    assert list(storage.tmp.iterdir()) == []
    dest = storage.area_dir("volumes", new_id())
    with storage.staging() as stage:
        (stage / "f").write_bytes(b"data")
        storage.publish(stage, dest)
    assert (dest / "f").read_bytes() == b"data" and list(storage.tmp.iterdir()) == []
    storage.remove_dir(dest)
    assert not dest.exists() and list(storage.trash.iterdir()) == []


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "a" / "b.bin"
    atomic_write_bytes(path, b"first")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second" and [p.name for p in path.parent.iterdir()] == ["b.bin"]


def test_ensure_clears_crash_leftovers(tmp_path):
    storage = Storage(tmp_path)
    storage.ensure()
    (storage.tmp / "stage-x").mkdir()
    (storage.tmp / "stage-x" / "t1n.part").write_bytes(b"half")
    storage.ensure()
    assert list(storage.tmp.iterdir()) == []


@pytest.fixture
def sessions(database_url):
    engine = make_engine(database_url)
    create_tables(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


def test_keys_are_stored_hashed_and_scoped(sessions):
    with session_scope(sessions) as s:
        row, plain = create_key(s, "ci", "segment,read")
    assert plain.startswith("msl_") and len(plain) > 40
    with session_scope(sessions) as s:
        stored = s.scalars(select(ApiKey)).one()
        assert stored.key_hash == hashlib.sha256(plain.encode()).hexdigest()
        assert plain not in (stored.key_hash, stored.prefix, stored.name) and stored.prefix == plain[:12]
        assert stored.scopes == ["read", "segment"]
        assert stored.created.tzinfo == UTC
        principal = authenticate(s, plain)
        assert principal.allows("read") and principal.allows("segment") and not principal.allows("train")
        with pytest.raises(Unauthorized):
            authenticate(s, plain + "x")
        assert revoke_key(s, row.id) and not revoke_key(s, new_id())
    with session_scope(sessions) as s:
        with pytest.raises(Unauthorized):
            authenticate(s, plain)
        assert [k.id for k in list_keys(s)] == [row.id]


def test_scope_parsing_and_admin():
    assert parse_scopes("train, read") == ["read", "train"]
    for bad in ("", "read,root", "super"):
        with pytest.raises(ValueError):
            parse_scopes(bad)
    admin = Principal("k", "n", frozenset({"admin"}))
    assert all(admin.allows(s) for s in SCOPES)


def test_volume_cascade_and_job_idempotency(sessions):
    vid = new_id()
    with session_scope(sessions) as s:
        s.add(Volume(id=vid, shape=[1, 2, 3], spacing=[1.0, 1.0, 2.5], files=[], meta={"k": [1, 2]}))
        s.flush()
        s.add(Segmentation(id=new_id(), volume_id=vid, model_id="m", path="segmentations/x"))
        s.add(Job(id=new_id(), kind="train_sae", params={"k": 32}, idempotency_key="abc"))
    with session_scope(sessions) as s:
        v = s.get(Volume, vid)
        assert (v.shape, v.spacing, v.meta, v.has_label, v.cohort) == (
            [1, 2, 3],
            [1.0, 1.0, 2.5],
            {"k": [1, 2]},
            False,
            None,
        )
        job = s.scalars(select(Job)).one()
        assert job.state == JobState.queued and job.params == {"k": 32} and job.created.tzinfo == UTC
        s.delete(v)
    with session_scope(sessions) as s:
        assert s.scalar(text("SELECT count(*) FROM segmentations")) == 0  # ON DELETE CASCADE
    with pytest.raises(IntegrityError), session_scope(sessions) as s:
        s.add(Job(id=new_id(), kind="train_sae", idempotency_key="abc"))


def test_ping_reports_unreachable_database():
    assert not ping(make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1"))
