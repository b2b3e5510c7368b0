"""The service's job table: order, states, restart."""

from __future__ import annotations

from pipeline.io.job_table import CANCELLED, FINISHED, QUEUED, RUNNING, JobStore


def test_jobs_are_claimed_oldest_first_per_worker_and_survive_reopening(tmp_path):
    store = JobStore(tmp_path)
    a = store.add({"output_dir": "/o/a"}, "cpu")
    b = store.add({"output_dir": "/o/b"}, "cuda:0")
    c = store.add({"output_dir": "/o/c"}, "cpu")
    assert store.queued() == 3 and store.queued("cpu") == 2
    assert sorted(store.workers()) == ["cpu", "cuda:0"]
    claimed = store.claim("cpu")
    assert claimed.id == a.id and claimed.state == RUNNING and claimed.attempts == 1
    assert store.cancel_queued(c.id) and not store.cancel_queued(a.id)
    assert store.get(c.id).state == CANCELLED and store.get(c.id).exit_code == 130
    store.update(a.id, done=3, total=5, stage="bundle adjustment")
    store.close()

    reopened = JobStore(tmp_path)
    assert reopened.requeue_unfinished() == ([a.id], [])  # running when the service died
    job = reopened.get(a.id)
    assert job.state == QUEUED and job.options == {"output_dir": "/o/a"}
    again = reopened.claim("cpu")
    assert again.id == a.id and again.attempts == 2 and again.done == 0 and again.total is None
    reopened.update(a.id, state=FINISHED, exit_code=0, result={"line": "ok", "digest": []})
    assert reopened.get(a.id).result == {"line": "ok", "digest": []}
    assert [j.id for j in reopened.jobs()] == [c.id, b.id, a.id]  # newest first
    assert reopened.get("nope") is None and reopened.claim("cpu") is None


def test_a_cancel_asked_for_survives_a_restart(tmp_path):
    """A running job whose cancel was asked for, the service killed before the run reached a
    window boundary, is cancelled at the next start, not run again."""
    store = JobStore(tmp_path)
    a = store.add({"output_dir": "/o/a"}, "cpu")
    b = store.add({"output_dir": "/o/b"}, "cpu")
    assert not store.request_cancel(a.id)  # queued: cancel_queued's business
    store.claim("cpu")
    store.claim("cpu")
    assert store.request_cancel(a.id)
    assert store.get(a.id).cancel_requested and store.get(a.id).stage == "cancelling"
    store.close()
    reopened = JobStore(tmp_path)
    assert reopened.requeue_unfinished() == ([b.id], [a.id])
    job = reopened.get(a.id)
    assert job.state == CANCELLED and job.exit_code == 130 and "cancelled" in job.error
    assert reopened.get(b.id).state == QUEUED
    assert reopened.claim("cpu").id == b.id and reopened.claim("cpu") is None
    reopened.close()


def test_a_table_of_an_earlier_version_gains_the_new_columns(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / "jobs.sqlite3")
    db.execute("CREATE TABLE jobs (number INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE "
               "NOT NULL, worker TEXT NOT NULL, state TEXT NOT NULL, options TEXT NOT NULL, "
               "created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT, done INTEGER NOT "
               "NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0, total INTEGER, stage TEXT, "
               "attempts INTEGER NOT NULL DEFAULT 0, exit_code INTEGER, error TEXT, result TEXT)")
    db.execute("INSERT INTO jobs (id, worker, state, options, created_at) VALUES "
               "('old', 'cpu', 'running', '{}', 'then')")
    db.commit()
    db.close()
    store = JobStore(tmp_path)
    assert store.get("old").cancel_requested is False
    assert store.requeue_unfinished() == (["old"], [])
    store.close()
