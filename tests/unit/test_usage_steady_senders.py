"""The ingest's GC freeze and switch interval are scoped to the files being ingested, even nested."""

from __future__ import annotations

import gc
import sys
import threading

from m3sh.usage.ingest import _steady_senders


def test_freezes_and_shortens_the_switch_interval_only_while_files_are_ingested() -> None:
    before = sys.getswitchinterval()
    gc.unfreeze()  # whatever an earlier test in this process left frozen
    with _steady_senders():
        assert gc.get_freeze_count() > 0
        assert sys.getswitchinterval() <= 0.001
        # a second file in another thread of the same process, finishing first
        inner_done = threading.Event()

        def other_file() -> None:
            with _steady_senders():
                assert sys.getswitchinterval() <= 0.001
            inner_done.set()

        t = threading.Thread(target=other_file)
        t.start()
        t.join(10)
        assert inner_done.is_set()
        # the outer file is still running: still frozen, still short
        assert gc.get_freeze_count() > 0 and sys.getswitchinterval() <= 0.001
    assert sys.getswitchinterval() == before
    assert gc.get_freeze_count() == 0


def test_restored_when_the_ingest_fails() -> None:
    before = sys.getswitchinterval()
    gc.unfreeze()
    try:
        with _steady_senders():
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert sys.getswitchinterval() == before and gc.get_freeze_count() == 0


def test_a_process_that_froze_its_heap_itself_stays_frozen() -> None:
    gc.freeze()  # as an executor does before forking its workers
    try:
        with _steady_senders():
            pass
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
