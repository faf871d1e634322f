"""FastAPI-style background tasks for trio apps served by Hypercorn.

Tasks added during a request run after its response, in a nursery inside the
request's own task (so a child of the server's connection), one after another
(or beside each other, with ``start_soon``); sync tasks run in worker threads.
Shutdown drains or cancels them by one deadline and reports what happened to
each.
"""

from ._backend import DurableBackend as DurableBackend
from ._health import health as health
from ._middleware import BackgroundTasksMiddleware as BackgroundTasksMiddleware
from ._middleware import from_scope as from_scope
from ._middleware import supervisor_from_scope as supervisor_from_scope
from ._monitor import TaskMonitor as TaskMonitor
from ._monitor import monitor as monitor
from ._observe import TaskObserver as TaskObserver
from ._policy import TaskPolicy as TaskPolicy
from ._policy import task as task
from ._progress import Progress as Progress
from ._progress import report_progress as report_progress
from ._records import ShutdownReport as ShutdownReport
from ._records import TaskRecord as TaskRecord
from ._serve import serve as serve
from ._supervisor import Snapshot as Snapshot
from ._supervisor import Supervisor as Supervisor
from ._supervisor import SupervisorStatistics as SupervisorStatistics
from ._supervisor import current_supervisor as current_supervisor
from ._tasks import BackgroundTask as BackgroundTask
from ._tasks import BackgroundTasks as BackgroundTasks
from ._tasks import TaskState as TaskState

__version__ = "0.1.0"

__all__ = [
    "BackgroundTask",
    "BackgroundTasks",
    "BackgroundTasksMiddleware",
    "DurableBackend",
    "Progress",
    "ShutdownReport",
    "Snapshot",
    "Supervisor",
    "SupervisorStatistics",
    "TaskMonitor",
    "TaskObserver",
    "TaskPolicy",
    "TaskRecord",
    "TaskState",
    "current_supervisor",
    "from_scope",
    "health",
    "monitor",
    "report_progress",
    "serve",
    "supervisor_from_scope",
    "task",
]
