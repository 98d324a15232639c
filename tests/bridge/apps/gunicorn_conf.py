"""gunicorn settings of the recipe servers: the one ResourceWarning gunicorn itself causes, ignored.

gunicorn's sync worker (27.0.1 and before) never closes its copies of the listening sockets
(the gthread worker does), so under ``PYTHONDEVMODE`` or ``PYTHONWARNINGS`` each sync worker
prints ``ResourceWarning: unclosed <socket.socket … laddr=(host, port)>`` for every listener
when it exits; a plain WSGI app without loopsafe shows it too
(``tests/bridge/test_sync_servers.py::test_gunicorn_sync_workers_leave_their_listeners_unclosed``).
Only that warning is ignored: in sync worker processes, for the listener sockets by their exact
repr. Any other unclosed socket (a loopsafe or app one) is still printed, and fails the tests.
"""

from __future__ import annotations

import re
import warnings
from typing import Any


def post_fork(server: Any, worker: Any) -> None:
    """In each new sync worker: ignore the unclosed-listener warning of its listeners only."""
    from gunicorn.workers.sync import SyncWorker

    if not isinstance(worker, SyncWorker):
        return
    for listener in worker.sockets:
        warnings.filterwarnings(
            "ignore",
            message=rf"unclosed {re.escape(repr(listener.sock))}\Z",
            category=ResourceWarning,
        )
