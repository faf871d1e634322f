"""A mountable ASGI app that shows what the supervisor is doing.

Opt-in: nothing is exposed unless you mount it, and whoever can reach it sees
task names, requests and errors, so protect it like any admin page. Routes,
relative to where it is mounted:

- ``GET /``: an HTML page with live progress bars (it polls the JSON).
- ``GET /tasks``: the :class:`Snapshot` as JSON.
- ``GET /tasks/<id>``: one task's record as JSON, or 404.

Mounted inside an app that has :class:`BackgroundTasksMiddleware`, it finds
the supervisor in the request's scope; elsewhere, pass the supervisor.
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

from ._asgi import EXCHANGE_KEY
from ._middleware import supervisor_from_scope

if TYPE_CHECKING:
    from ._asgi import Receive, Scope, Send
    from ._supervisor import Supervisor

__all__ = ["TaskMonitor", "monitor"]


def monitor(supervisor: Supervisor | None = None, *, poll_interval: float = 0.5) -> TaskMonitor:
    """An ASGI app showing the tasks of ``supervisor`` (None: the request's).

    Example::

        app.mount("/admin/tasks", trio_background.monitor())

    Args:
        supervisor: The supervisor to show; None finds it in the request.
        poll_interval: Seconds between the page's refreshes.

    Raises:
        ValueError: ``poll_interval`` is not positive.
    """
    return TaskMonitor(supervisor, poll_interval=poll_interval)


class TaskMonitor:
    """The monitor app; make one with :func:`monitor`."""

    def __init__(self, supervisor: Supervisor | None = None, *, poll_interval: float = 0.5) -> None:
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
        self.supervisor = supervisor
        self.poll_interval = poll_interval

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError(
                f"the task monitor serves HTTP only, got a {scope['type']!r} scope: mount it "
                "in an app (app.mount('/tasks', monitor())) or serve it behind the middleware"
            )
        supervisor = self.supervisor
        if supervisor is None:
            if EXCHANGE_KEY not in scope:
                await _respond(
                    send,
                    500,
                    "text/plain",
                    "the task monitor found no supervisor: mount it inside an app that has "
                    "BackgroundTasksMiddleware, or pass one: monitor(supervisor=...)",
                )
                return
            supervisor = supervisor_from_scope(scope)
        if scope["method"] not in ("GET", "HEAD"):
            await _respond(send, 405, "text/plain", "the task monitor is read-only: use GET")
            return
        path = _route_path(scope)
        root = scope.get("root_path", "")
        if path in ("", "/"):
            await _respond(send, 200, "text/html; charset=utf-8", self._page(root))
        elif path == "/tasks":
            await _respond_json(send, 200, supervisor.snapshot().to_dict())
        elif path.startswith("/tasks/"):
            record = supervisor.task(path.removeprefix("/tasks/"))
            if record is None:
                await _respond_json(send, 404, {"error": "no such task, or its record was dropped"})
            else:
                await _respond_json(send, 200, record.to_dict())
        else:
            await _respond(send, 404, "text/plain", "not found")

    def _page(self, root: str) -> str:
        url = html.escape(json.dumps(f"{root}/tasks"), quote=False)
        interval = int(self.poll_interval * 1000)
        return _PAGE.replace("__TASKS_URL__", url).replace("__INTERVAL__", str(interval))


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :]
    return path


async def _respond(send: Send, status: int, content_type: str, body: str) -> None:
    data = body.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(data)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _respond_json(send: Send, status: int, data: Any) -> None:
    await _respond(send, status, "application/json", json.dumps(data))


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Background tasks</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 2em; color: #222; }
  h1 { font-size: 1.3em; }
  table { border-collapse: collapse; width: 100%; margin-bottom: 2em; }
  th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #ddd; }
  .bar { width: 200px; height: 12px; background: #eee; border-radius: 6px; overflow: hidden; }
  .bar > div { height: 100%; background: #3a7; }
  .state-failed, .state-cancelled, .state-abandoned { color: #b22; }
  .state-skipped { color: #a70; }
  .state-completed { color: #272; }
  #shutdown { display: none; padding: 8px; background: #fde; border: 1px solid #b22; }
  #counts { color: #555; }
</style>
</head>
<body>
<h1>Background tasks</h1>
<p id="counts"></p>
<p id="shutdown"></p>
<h2>Running and pending</h2>
<table><thead><tr><th>id</th><th>task</th><th>request</th><th>state</th>
<th>progress</th><th>message</th></tr></thead><tbody id="active"></tbody></table>
<h2>Recently finished</h2>
<table><thead><tr><th>id</th><th>task</th><th>request</th><th>state</th>
<th>progress</th><th>error or reason</th></tr></thead><tbody id="finished"></tbody></table>
<script>
const TASKS_URL = __TASKS_URL__;
function cell(text) {
  const td = document.createElement("td"); td.textContent = text ?? ""; return td;
}
function bar(progress) {
  const td = document.createElement("td");
  if (!progress) return td;
  const outer = document.createElement("div"); outer.className = "bar";
  const inner = document.createElement("div");
  const fraction = progress.total ? Math.min(1, progress.done / progress.total) : 0;
  inner.style.width = (100 * fraction).toFixed(1) + "%";
  outer.setAttribute("role", "progressbar");
  outer.setAttribute("aria-valuenow", progress.done);
  if (progress.total) outer.setAttribute("aria-valuemax", progress.total);
  outer.appendChild(inner); td.appendChild(outer);
  return td;
}
function row(r, last) {
  const tr = document.createElement("tr");
  tr.id = "task-" + r.id; tr.dataset.state = r.state;
  tr.append(cell(r.id), cell(r.name), cell(r.request));
  const state = cell(r.state); state.className = "state-" + r.state; tr.append(state);
  tr.append(bar(r.progress), cell(last(r)));
  return tr;
}
async function refresh() {
  try {
    const response = await fetch(TASKS_URL, {cache: "no-store"});
    const data = await response.json();
    const c = data.counts;
    document.getElementById("counts").textContent =
      Object.keys(c).map(k => c[k] + " " + k).join(", ");
    const banner = document.getElementById("shutdown");
    if (data.shutting_down) {
      banner.style.display = "block";
      banner.textContent = "Shutting down: deadline in " + data.deadline_in.toFixed(1) +
        " s; it will cut " + data.active.length + " unfinished task(s).";
    } else { banner.style.display = "none"; }
    document.getElementById("active").replaceChildren(
      ...data.active.map(r => row(r, r => r.progress && r.progress.message)));
    document.getElementById("finished").replaceChildren(
      ...data.finished.slice().reverse().map(r => row(r, r => r.error || r.reason)));
  } catch (e) { /* the server may be restarting: try again */ }
}
refresh(); setInterval(refresh, __INTERVAL__);
</script>
</body>
</html>
"""
