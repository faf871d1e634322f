"""A mountable ASGI app that shows what the supervisor is doing.

Opt-in: nothing is exposed unless you mount it, and whoever can reach it sees
task names, requests and errors, so protect it like any admin page. Routes,
relative to where it is mounted:

- ``GET /``: an HTML page with live progress bars (it polls the JSON).
- ``GET /tasks?limit=&after=``: one page of the unfinished tasks, the exact
  counts, and the most recent finished tasks, as JSON.
- ``GET /tasks/<id>``: one task's record as JSON, or 404.
- ``POST /tasks/<id>/cancel``: only with ``monitor(allow_cancel=True)``;
  cancels the task (:meth:`Supervisor.cancel`) when the request comes from
  the monitor's own page (see "Cancelling" below).

The one hard idea: a poll must cost the event loop the same with 20 tasks
in flight as with 20,000. So ``/tasks`` asks the supervisor for one page
(:meth:`Supervisor.active_page`, which builds only the records it returns)
and for its counters (:meth:`Supervisor.statistics`), never for a snapshot
of everything; and the page stops polling while its tab is hidden.

Every answer is short and typed: an id or a query it cannot read is a 404
or a 400 with one line saying why, never a 500. Every answer says
``X-Content-Type-Options: nosniff``, and the page's Content-Security-Policy
lets only its own script run, so a task name such as ``<script>`` stays text.

Cancelling: a cancel button is a state-changing action on an admin page,
the classic target of cross-site request forgery (a page on another origin
that the admin's browser visits posts a form to the monitor). The POST is
honoured only with a custom header (``X-Requested-With:
trio-background-monitor``) and ``Content-Type: application/json``: a form
can set neither, and a cross-origin ``fetch`` that sets them is preflighted,
which the monitor never answers with CORS headers, so the browser refuses
to send it. As a second line, for an app whose CORS middleware would answer
that preflight, the browser's own ``Sec-Fetch-Site`` must say
``same-origin`` (or, from a browser too old to send it, ``Origin`` must name
the request's own host). No token is needed, so the page works across
``--workers`` processes.

Mounted inside an app that has :class:`BackgroundTasksMiddleware`, it finds
the supervisor in the request's scope; elsewhere, pass the supervisor.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from ._asgi import EXCHANGE_KEY
from ._middleware import supervisor_from_scope

if TYPE_CHECKING:
    from ._asgi import Receive, Scope, Send
    from ._records import TaskRecord
    from ._supervisor import Supervisor

__all__ = ["DEFAULT_PAGE_LIMIT", "MAX_PAGE_LIMIT", "TaskMonitor", "monitor"]

DEFAULT_PAGE_LIMIT = 100
MAX_PAGE_LIMIT = 1000

# "<batch>.<index>" in ASCII digits, of a length an int() reads at once, with
# "<pid>-" before it under --workers. str.isdigit() also accepts "²" and
# friends, and int() refuses strings of more than 4300 digits: both used to
# end in a 500.
_TASK_ID = re.compile(r"(?:[0-9]{1,10}-)?[0-9]{1,18}\.[0-9]{1,18}", re.ASCII)
_CANCEL_PATH = re.compile(r"/tasks/([^/]*)/cancel")
_ECHO_LIMIT = 40

# What the page's cancel button sends, and the monitor requires (see the top).
CANCEL_HEADER = "X-Requested-With"
CANCEL_HEADER_VALUE = "trio-background-monitor"


def monitor(
    supervisor: Supervisor | None = None,
    *,
    poll_interval: float = 0.5,
    page_limit: int = DEFAULT_PAGE_LIMIT,
    allow_cancel: bool = False,
) -> TaskMonitor:
    """An ASGI app showing the tasks of ``supervisor`` (None: the request's).

    Example::

        app.mount("/admin/tasks", trio_background.monitor())

    Args:
        supervisor: The supervisor to show; None finds it in the request.
        poll_interval: Seconds between the page's refreshes while its tab
            is visible (it does not poll while the tab is hidden).
        page_limit: How many unfinished tasks ``/tasks`` returns when the
            query does not say (``?limit=``); at most 1000.
        allow_cancel: Show a cancel button on each pending or running task,
            and accept ``POST /tasks/<id>/cancel`` from the monitor's own page
            (never from another origin). Off by default: then there is no
            button and no such endpoint (every POST is a 405).

    Raises:
        ValueError: ``poll_interval`` is not positive, or ``page_limit`` is
            not an int from 1 to 1000.
        TypeError: ``allow_cancel`` is not a bool.
    """
    return TaskMonitor(
        supervisor, poll_interval=poll_interval, page_limit=page_limit, allow_cancel=allow_cancel
    )


class _BadQuery(Exception):
    """A query parameter the monitor cannot use; the message is the 400 body."""


def _echo(value: str) -> str:
    shown = value if len(value) <= _ECHO_LIMIT else value[:_ECHO_LIMIT] + "..."
    return repr(shown)


def _page_limit(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PAGE_LIMIT:
        raise ValueError(f"page_limit must be an int from 1 to {MAX_PAGE_LIMIT}, got {value!r}")
    return value


def _allow_cancel(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"allow_cancel must be True or False, got {value!r}")
    return value


def _parse_query(query_string: bytes, default_limit: int) -> tuple[int, str | None]:
    """``(limit, after)`` from ``?limit=&after=``; other parameters are ignored."""
    limit = default_limit
    after: str | None = None
    try:
        pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    except ValueError:  # pragma: no cover - parse_qsl only raises with strict_parsing
        raise _BadQuery("the query string cannot be read") from None
    for key, value in pairs:
        if key == "limit":
            if not (value.isascii() and value.isdigit() and len(value) <= 4):
                raise _BadQuery(
                    f"limit must be a whole number from 1 to {MAX_PAGE_LIMIT}, got {_echo(value)}"
                )
            limit = int(value)
            if not 1 <= limit <= MAX_PAGE_LIMIT:
                raise _BadQuery(
                    f"limit must be a whole number from 1 to {MAX_PAGE_LIMIT}, got {_echo(value)}"
                )
        elif key == "after":
            if _TASK_ID.fullmatch(value) is None:
                raise _BadQuery(
                    f"after must be a task id such as 1.0 (the 'next' of the previous "
                    f"page), got {_echo(value)}"
                )
            after = value
    return limit, after


def _recent_finished(supervisor: Supervisor, limit: int) -> list[TaskRecord]:
    """The ``limit`` most recent kept records of finished tasks."""
    return supervisor.recent_finished(limit)


def tasks_page(supervisor: Supervisor, *, limit: int, after: str | None) -> dict[str, Any]:
    """What ``GET /tasks`` answers: one page of unfinished tasks and the counts.

    Builds at most ``limit`` live records, whatever the number of tasks in
    flight; ``active_count`` and ``counts`` are exact.
    """
    statistics = supervisor.statistics()
    active, cursor = supervisor.active_page(after=after, limit=limit)
    deadline_in = supervisor.time_until_deadline() if statistics.shutting_down else None
    return {
        # Which process answered: with --workers, each poll may reach another.
        "pid": os.getpid(),
        "shutting_down": statistics.shutting_down,
        "deadline_in": deadline_in,
        "counts": dict(statistics.counts),
        "batches_running": statistics.batches_running,
        "threads_busy": statistics.threads_busy,
        "active_count": statistics.tasks_active,
        "limit": limit,
        "after": after,
        "next": cursor,
        "active": [record.to_dict() for record in active],
        "finished": [record.to_dict() for record in _recent_finished(supervisor, limit)],
    }


class TaskMonitor:
    """The monitor app; make one with :func:`monitor`."""

    def __init__(
        self,
        supervisor: Supervisor | None = None,
        *,
        poll_interval: float = 0.5,
        page_limit: int = DEFAULT_PAGE_LIMIT,
        allow_cancel: bool = False,
    ) -> None:
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
        self.supervisor = supervisor
        self.poll_interval = poll_interval
        self.page_limit = _page_limit(page_limit)
        self.allow_cancel = _allow_cancel(allow_cancel)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError(
                f"the task monitor serves HTTP only, got a {scope['type']!r} scope: mount it "
                "in an app (app.mount('/tasks', monitor())) or serve it behind the middleware"
            )
        supervisor = self.supervisor
        if supervisor is None:
            if EXCHANGE_KEY not in scope:
                await _respond_text(
                    send,
                    500,
                    "the task monitor found no supervisor: mount it inside an app that has "
                    "BackgroundTasksMiddleware, or pass one: monitor(supervisor=...)",
                )
                return
            supervisor = supervisor_from_scope(scope)
        path = _route_path(scope)
        if self.allow_cancel:
            cancel = _CANCEL_PATH.fullmatch(path)
            if cancel is not None:
                await _cancel(supervisor, cancel.group(1), scope, receive, send)
                return
        if scope["method"] not in ("GET", "HEAD"):
            text = "the task monitor is read-only: use GET"
            if self.allow_cancel:
                text += " (or POST /tasks/<id>/cancel from its page)"
            await _respond_text(send, 405, text, allow=b"GET, HEAD")
            return
        if path in ("", "/"):
            page = self._page(scope.get("root_path", ""))
            await _respond(send, 200, "text/html; charset=utf-8", page.encode(), _PAGE_CSP)
        elif path == "/tasks":
            try:
                limit, after = _parse_query(scope.get("query_string", b""), self.page_limit)
            except _BadQuery as exc:
                await _respond_text(send, 400, str(exc))
                return
            try:
                answer = tasks_page(supervisor, limit=limit, after=after)
            except ValueError:
                # Another worker's id (with --workers, a poll may reach any of them).
                await _respond_text(
                    send,
                    400,
                    f"after must be a task id of worker pid {os.getpid()}, got "
                    f"{_echo(after or '')}: this page's cursor came from another worker; "
                    "start again from the first page",
                )
                return
            await _respond_json(send, 200, answer)
        elif path.startswith("/tasks/"):
            task_id = path.removeprefix("/tasks/")
            record = supervisor.task(task_id) if _TASK_ID.fullmatch(task_id) else None
            if record is None:
                await _respond_json(send, 404, {"error": "no such task, or its record was dropped"})
            else:
                await _respond_json(send, 200, record.to_dict())
        else:
            await _respond_text(send, 404, "not found")

    def _page(self, root: str) -> str:
        # Data goes in attributes, which the script reads: the script itself
        # never changes, so one hash in the CSP names it.
        url = html.escape(f"{root}/tasks", quote=True)
        interval = max(1, int(self.poll_interval * 1000))
        # The URL goes in last, so a mount path cannot hold a placeholder.
        return (
            _PAGE.replace("__INTERVAL__", str(interval))
            .replace("__LIMIT__", str(self.page_limit))
            .replace("__CANCEL__", "on" if self.allow_cancel else "off")
            .replace("__TASKS_URL__", url)
        )


def _header(scope: Scope, name: bytes) -> str | None:
    """The value of header ``name`` (lower case), or None; several are joined."""
    values = [value for key, value in scope.get("headers", ()) if key.lower() == name]
    if not values:
        return None
    return b", ".join(values).decode("latin-1")


def _forged(scope: Scope) -> str | None:
    """Why a cancel request may not come from the monitor's own page, or None.

    The checks are the top of this module's: the custom header and the JSON
    content type (which no form can send, and which make a cross-origin fetch
    a preflight nobody answers), then the browser's word on where the request
    comes from.
    """
    if _header(scope, CANCEL_HEADER.lower().encode()) != CANCEL_HEADER_VALUE:
        return f"the request lacks the header {CANCEL_HEADER}: {CANCEL_HEADER_VALUE}"
    content_type = (_header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        return "the request's Content-Type is not application/json"
    site = _header(scope, b"sec-fetch-site")
    if site is not None:
        if site != "same-origin":
            return f"the browser says the request comes from another origin ({site})"
        return None
    origin = _header(scope, b"origin")
    if origin is not None and urlsplit(origin).netloc != _header(scope, b"host"):
        return "the request's Origin is not this server"
    return None


async def _drain(receive: Receive) -> None:
    """Read the request's body (the cancel needs none), so the connection stays usable."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def _cancel(
    supervisor: Supervisor, task_id: str, scope: Scope, receive: Receive, send: Send
) -> None:
    """``POST /tasks/<id>/cancel``: the route exists only with ``allow_cancel``."""
    if scope["method"] != "POST":
        await _respond_text(send, 405, "cancel a task with POST", allow=b"POST")
        return
    why = _forged(scope)
    if why is not None:
        await _respond_text(
            send, 403, f"cancel refused: {why}; cancel tasks from the monitor's own page"
        )
        return
    await _drain(receive)
    if _TASK_ID.fullmatch(task_id) is None or supervisor.task(task_id) is None:
        worker, dash, _ = task_id.partition("-")
        if dash and worker != str(os.getpid()) and _TASK_ID.fullmatch(task_id):
            error = (
                f"task {task_id} belongs to worker pid {worker}, and this is pid "
                f"{os.getpid()}: cancel it from a page that worker served"
            )
        else:
            error = "no such task, or its record was dropped"
        await _respond_json(send, 404, {"error": error})
        return
    changed = supervisor.cancel(task_id)
    record = supervisor.task(task_id)
    await _respond_json(
        send,
        200,
        {
            "id": task_id,
            "cancelled": changed,
            "state": None if record is None else record.state.value,
        },
    )


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :]
    return path


_JSON_CSP = b"default-src 'none'; frame-ancestors 'none'"


async def _respond(
    send: Send,
    status: int,
    content_type: str,
    data: bytes,
    csp: bytes,
    allow: bytes | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(data)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        (b"content-security-policy", csp),
        (b"referrer-policy", b"no-referrer"),
    ]
    if allow is not None:
        headers.append((b"allow", allow))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def _respond_text(send: Send, status: int, body: str, allow: bytes | None = None) -> None:
    await _respond(send, status, "text/plain; charset=utf-8", body.encode(), _JSON_CSP, allow)


async def _respond_json(send: Send, status: int, data: Any) -> None:
    await _respond(send, status, "application/json", json.dumps(data).encode(), _JSON_CSP)


_STYLE = """
  body { font: 14px system-ui, sans-serif; margin: 2em; color: #222; }
  h1 { font-size: 1.3em; }
  table { border-collapse: collapse; width: 100%; margin-bottom: 1em; }
  th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #ddd; }
  .bar { width: 200px; height: 12px; background: #eee; border-radius: 6px; overflow: hidden; }
  .bar > div { height: 100%; background: #3a7; }
  .state-failed, .state-cancelled, .state-abandoned { color: #b22; }
  .state-skipped { color: #a70; }
  .state-completed { color: #272; }
  .state-handed_off { color: #247; }
  #shutdown { display: none; padding: 8px; background: #fde; border: 1px solid #b22; }
  #counts, #shown, #contact { color: #555; }
  #contact.lost { color: #b22; font-weight: bold; }
  nav { margin-bottom: 2em; }
"""

_SCRIPT = """
"use strict";
const config = document.body.dataset;
const TASKS_URL = config.tasksUrl;
const INTERVAL = Number(config.interval);
const LIMIT = Number(config.limit);
const CANCEL = config.cancel === "on";
let after = null;  // the cursor of the page shown; null: the first page
let pages = [];    // the cursors before it, for "previous"
let next = null;
let delay = INTERVAL;
let timer = null;
// When the server last answered (this page's clock), and which process did.
let heard = null;
let pid = null;
let failure = null;
// No answer for this long: the page says it lost contact (and shows old data).
const STALE = Math.max(3000, 3 * INTERVAL);
function describeContact() {
  if (document.visibilityState === "hidden") return;
  const contact = document.getElementById("contact");
  if (heard === null) {
    contact.textContent = failure ? "No answer from the server yet (" + failure + ")." : "";
    contact.className = failure ? "lost" : "";
    return;
  }
  const ago = (Date.now() - heard) / 1000;
  const lost = ago * 1000 > STALE;
  contact.className = lost ? "lost" : "";
  contact.dataset.state = lost ? "lost" : "live";
  contact.textContent = lost
    ? "Lost contact with the server: no answer for " + ago.toFixed(0) + " s" +
      (failure ? " (" + failure + ")" : "") + "; what is shown is worker pid " + pid +
      " as of then."
    : "Showing worker pid " + pid + "; last heard from the server " + ago.toFixed(1) +
      " s ago.";
}
setInterval(describeContact, 1000);
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
function attempts(r) {
  // Only a task that ran more than once (retries) says how often.
  const td = cell(r.attempts > 1 ? r.attempts + " attempts" : "");
  td.className = "attempts";
  return td;
}
function row(r, last) {
  const tr = document.createElement("tr");
  tr.id = "task-" + r.id; tr.dataset.state = r.state;
  tr.append(cell(r.id), cell(r.name), cell(r.request));
  const state = cell(r.state); state.className = "state-" + r.state; tr.append(state);
  tr.append(attempts(r), bar(r.progress), cell(last(r)));
  return tr;
}
function activeRow(r) {
  const tr = row(r, r => r.progress && r.progress.message);
  if (!CANCEL) return tr;
  const td = document.createElement("td");
  if (r.state === "pending" || r.state === "running") {
    const button = document.createElement("button");
    button.type = "button"; button.className = "cancel"; button.textContent = "Cancel";
    button.addEventListener("click", () => cancel(r.id, button));
    td.appendChild(button);
  }
  tr.appendChild(td);
  return tr;
}
async function cancel(id, button) {
  button.disabled = true;
  const status = document.getElementById("cancel-status");
  try {
    // The header and the JSON type are what the server checks: a page on
    // another origin cannot send them without a preflight it refuses.
    const response = await fetch(TASKS_URL + "/" + encodeURIComponent(id) + "/cancel", {
      method: "POST", cache: "no-store", credentials: "same-origin",
      headers: {"X-Requested-With": "trio-background-monitor",
                "Content-Type": "application/json"},
      body: "{}"});
    const text = await response.text();
    if (!response.ok) {
      let why = text;
      try { why = JSON.parse(text).error ?? text; } catch (e) { /* plain text */ }
      throw new Error("HTTP " + response.status + ": " + why);
    }
    const data = JSON.parse(text);
    status.textContent = data.cancelled
      ? "Cancelled task " + id + "."
      : "Task " + id + " was not cancelled: it had ended (" + data.state + ").";
  } catch (e) {
    status.textContent = "Could not cancel task " + id + ": " +
      (e instanceof Error ? e.message : String(e));
  }
  refresh();
}
function finishedNote(r) {
  if (r.state === "handed_off") return "engine id " + (r.engine_id ?? "?");
  return r.error || r.reason;
}
function show(data) {
  const c = data.counts;
  document.getElementById("counts").textContent =
    data.active_count + " running or pending; finished: " +
    Object.keys(c).map(k => c[k] + " " + k).join(", ");
  const banner = document.getElementById("shutdown");
  if (data.shutting_down) {
    banner.style.display = "block";
    banner.textContent = "Shutting down: deadline in " + data.deadline_in.toFixed(1) +
      " s; it will cut " + data.active_count + " unfinished task(s).";
  } else { banner.style.display = "none"; }
  document.getElementById("active").replaceChildren(...data.active.map(activeRow));
  document.getElementById("shown").textContent =
    "Showing " + data.active.length + " of " + data.active_count + ".";
  next = data.next;
  document.getElementById("next").disabled = next === null;
  document.getElementById("previous").disabled = pages.length === 0;
  document.getElementById("finished").replaceChildren(
    ...data.finished.slice().reverse().map(r => row(r, finishedNote)));
}
function schedule(ms) {
  clearTimeout(timer);
  timer = null;
  // A hidden tab does not poll at all; it polls at once when shown again.
  if (document.visibilityState === "hidden") return;
  timer = setTimeout(refresh, ms);
}
async function refresh() {
  const query = new URLSearchParams({limit: String(LIMIT)});
  if (after !== null) query.set("after", after);
  try {
    const response = await fetch(
      TASKS_URL + "?" + query, {cache: "no-store", signal: AbortSignal.timeout(STALE)});
    if (!response.ok) throw new Error("HTTP " + response.status);
    const data = await response.json();
    show(data);
    heard = Date.now(); pid = data.pid; failure = null;
    delay = INTERVAL;
  } catch (e) {
    // The server may be restarting: try again, less and less often (at most
    // every STALE ms, so the page notices when it answers again).
    failure = e instanceof Error ? e.message : String(e);
    delay = Math.min(STALE, delay * 2);
  }
  describeContact();
  schedule(delay);
}
document.getElementById("next").addEventListener("click", () => {
  if (next === null) return;
  pages.push(after); after = next; refresh();
});
document.getElementById("previous").addEventListener("click", () => {
  if (pages.length === 0) return;
  after = pages.pop(); refresh();
});
if (CANCEL) {
  const th = document.createElement("th"); th.textContent = "cancel";
  document.getElementById("active-head").appendChild(th);
}
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") { delay = INTERVAL; refresh(); }
  else schedule(0);
});
refresh();
"""


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode()).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


_PAGE_CSP = (
    "default-src 'none'; "
    f"script-src {_csp_hash(_SCRIPT)}; "
    f"style-src {_csp_hash(_STYLE)}; "
    "connect-src 'self'; "
    "img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
).encode()

_PAGE = (
    """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Background tasks</title>
<style>"""
    + _STYLE
    + """</style>
</head>
<body data-tasks-url="__TASKS_URL__" data-interval="__INTERVAL__" data-limit="__LIMIT__"
 data-cancel="__CANCEL__">
<h1>Background tasks</h1>
<p id="contact"></p>
<p id="counts"></p>
<p id="shutdown"></p>
<p id="cancel-status" role="status"></p>
<h2>Running and pending</h2>
<table><thead><tr id="active-head"><th>id</th><th>task</th><th>request</th><th>state</th>
<th>attempts</th><th>progress</th><th>message</th></tr></thead><tbody id="active"></tbody>
</table>
<nav><span id="shown"></span>
<button id="previous" type="button" disabled>Previous page</button>
<button id="next" type="button" disabled>Next page</button></nav>
<h2>Recently finished</h2>
<table><thead><tr><th>id</th><th>task</th><th>request</th><th>state</th><th>attempts</th>
<th>progress</th><th>error, reason or engine id</th></tr></thead><tbody id="finished"></tbody>
</table>
<script>"""
    + _SCRIPT
    + """</script>
</body>
</html>
"""
)
