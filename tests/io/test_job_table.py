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
    assert reopened.requeue_unfinished() == [a.id]  # it was running when the service died
    job = reopened.get(a.id)
    assert job.state == QUEUED and job.options == {"output_dir": "/o/a"}
    again = reopened.claim("cpu")
    assert again.id == a.id and again.attempts == 2 and again.done == 0 and again.total is None
    reopened.update(a.id, state=FINISHED, exit_code=0, result={"line": "ok", "digest": []})
    assert reopened.get(a.id).result == {"line": "ok", "digest": []}
    assert [j.id for j in reopened.jobs()] == [c.id, b.id, a.id]  # newest first
    assert reopened.get("nope") is None and reopened.claim("cpu") is None
