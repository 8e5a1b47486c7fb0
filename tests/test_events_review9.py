"""Found in the ninth round of review.

* ``AsyncFoundation``: a SIGTERM turned into ``SystemExit`` (the advice of
  docs/deployment.md) while a plain handler ran on the loop recorded the subscription as
  ``failed`` ("SystemExit: 0") in its row, with a telemetry ``failed`` and an error in the
  log, at every such shutdown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from foundation import Foundation

_SIGTERM_APP = textwrap.dedent(
    """
    import asyncio, signal, sys, time
    from foundation import AsyncFoundation

    def handler(event):
        print("handling", event.position, flush=True)
        time.sleep(5)  # a plain handler, on the loop: SIGTERM lands in it

    async def main():
        async with AsyncFoundation(sys.argv[1], migrate="check") as fdn:
            await fdn.events.store({"type": "job"})
            await fdn.events.subscribe("projector", handler, poll_interval_ms=20)
            await asyncio.sleep(60)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(main())
    """
)


def test_sigterm_in_a_plain_async_handler_is_a_stop_not_a_failure(db_url: str) -> None:
    app = subprocess.Popen(
        [sys.executable, "-c", _SIGTERM_APP, db_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert app.stdout is not None
        line = app.stdout.readline()
        assert line.startswith("handling"), line + app.stderr.read() if app.stderr else ""
        app.send_signal(signal.SIGTERM)
        _, err = app.communicate(timeout=60)
    finally:
        app.kill()
    assert app.returncode == 0, err
    assert "failed" not in err and "delivered again" in err
    with Foundation(db_url, migrate="check") as fdn:
        row = fdn.database.fetchone(fdn.events._sql.sub_read, {"name": "projector"})
        assert row is not None
        # Stopped, and the interrupted event (position 1) was not checkpointed.
        assert (row[0], row[1], row[3]) == (0, "stopped", None)
        fdn.events.subscribe("projector", lambda e: None).stop()  # the name is free
