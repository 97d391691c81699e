"""The tracker's poll walks a backend's unfinished jobs a page at a time
(bes.db.activity_rows.backend_jobs_to_watch): every one of them in turn, each once per walk,
whatever their number, ties in creation time included; on both engines."""

from __future__ import annotations

from bes.db import activity_rows as rows
from bes.db.store import Database
from bes.ids import ActivityId, BackendJobId
from bes.states import ActivityState
from tests.db.test_overview_rows import SECOND, create, move
from tests.support.queue import T0


def handed(db: Database, activity_id: ActivityId) -> None:
    """The backend took it (the activity is Submitted with a job id)."""
    job = BackendJobId("g-" + activity_id)
    assert db.write_sync(rows.set_backend_job, (activity_id, job, T0, None, None))


def walk(db: Database, backend: str, limit: int) -> list[list[ActivityId]]:
    pages: list[list[ActivityId]] = []
    mark = None
    for _ in range(100):
        page, mark = db.read_sync(rows.backend_jobs_to_watch, backend, limit, mark)
        pages.append([activity_id for activity_id, *_ in page])
        if mark is None:
            return pages
    raise AssertionError("the walk never ended")


def test_a_walk_sees_every_unfinished_job_once(db: Database) -> None:
    watched = []
    for i in range(7):  # three share one creation time: the id breaks the tie
        made = create(db, "alice", T0 + min(i, 4) * SECOND)
        handed(db, made)
        watched.append(made)
    for made in watched[:3]:
        move(db, made, ActivityState.RUNNING, T0)
    ended = create(db, "bob", T0)
    handed(db, ended)
    move(db, ended, ActivityState.CANCELLED, T0)
    create(db, "bob", T0)  # not handed to the backend yet: nothing to ask it

    pages = walk(db, "desktopgrid", 3)
    seen = [activity_id for page in pages for activity_id in page]
    assert sorted(seen) == sorted(watched)  # each once; neither the ended one nor the unsent
    assert [len(page) for page in pages] == [3, 3, 1]
    page, _ = db.read_sync(rows.backend_jobs_to_watch, "desktopgrid", 3, None)
    assert [r[0] for r in page] == pages[0]  # the next walk starts again from the first
    states = {r[0]: r[2] for r in db.read_sync(rows.backend_jobs_to_watch, "desktopgrid", 10)[0]}
    assert [states[a] for a in watched[:3]] == [ActivityState.RUNNING] * 3
    assert walk(db, "cloud", 3) == [[]]  # another backend's walk sees none of them


def test_a_page_as_long_as_what_is_left_ends_the_walk_on_the_next(db: Database) -> None:
    made = [create(db, "alice", T0 + i * SECOND) for i in range(4)]
    for activity_id in made:
        handed(db, activity_id)
    assert walk(db, "desktopgrid", 2) == [made[:2], made[2:], []]
