"""A local motor-insurance quote site for the robot example (standard library only).

Fifteen screens of forms with server-side validation; screen 5 shows premium estimates
after a short calculation; screen 15 shows the quote. Submitting the risk questionnaire
(screen 9) for the plate ``FAIL000`` makes the site fail with HTTP 500 and a message.

    from quote_site import start_site
    site = start_site()            # http://127.0.0.1:<free port>
    ...
    site.stop()

Run it on its own with ``python -m quote_site --port 8080`` from the ``examples`` folder.
"""

from __future__ import annotations

from .screens import FAILING_PLATE, TOTAL_SCREENS
from .server import RunningSite, start_site

__all__ = ["FAILING_PLATE", "TOTAL_SCREENS", "RunningSite", "start_site"]
