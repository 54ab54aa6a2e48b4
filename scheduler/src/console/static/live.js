// AIbro Console: live updates of the jobs page (table#jobs) from the
// server-sent events of /console/events. Each `job` event carries a job's
// row as JSON: its row's cells are updated in place, or a row is added on
// the last page when it passes the page's filters. Text is set with
// textContent only. Without this script the page works, just not live.
"use strict";

(function () {
  const table = document.getElementById("jobs");
  if (!table || !window.EventSource) {
    return;
  }
  const body = table.tBodies[0];

  function cell(row, name) {
    let td = row.querySelector("td." + name);
    if (!td) {
      td = document.createElement("td");
      td.className = name;
      row.appendChild(td);
    }
    return td;
  }

  function setStatus(td, job) {
    const status = document.createElement("span");
    status.className = "status status-" + job.status;
    status.textContent = job.status;
    const sub = document.createElement("span");
    sub.className = "substatus";
    sub.textContent = job.substatus;
    td.replaceChildren(status, " / ", sub);
  }

  function newRow(job) {
    const row = document.createElement("tr");
    row.dataset.jobId = job.id;
    const link = document.createElement("a");
    link.className = "job-link";
    link.href = "/console/jobs/" + encodeURIComponent(job.id);
    link.textContent = job.model_name;
    cell(row, "model").appendChild(link);
    cell(row, "kind").textContent = job.kind;
    cell(row, "status");
    for (const name of ["machines", "instances", "cost"]) {
      cell(row, name).textContent = "…";
    }
    cell(row, "created").textContent = job.created;
    cell(row, "updated");
    const none = document.getElementById("no-jobs");
    if (none) {
      none.remove();
    }
    body.appendChild(row);
    return row;
  }

  function passes(job) {
    const status = table.dataset.status;
    const kind = table.dataset.kind;
    return (!status || status === job.status) && (!kind || kind === job.kind);
  }

  function update(job) {
    let row = null;
    for (const r of body.rows) {
      if (r.dataset.jobId === job.id) {
        row = r;
      }
    }
    if (!row) {
      if (table.dataset.lastPage !== "true" || !passes(job)) {
        return;
      }
      row = newRow(job);
    }
    setStatus(cell(row, "status"), job);
    cell(row, "updated").textContent = job.updated;
  }

  const events = new EventSource("/console/events");
  events.addEventListener("job", function (e) {
    update(JSON.parse(e.data));
  });
  events.addEventListener("reload", function () {
    window.location.reload();
  });
  events.addEventListener("open", function () {
    table.dataset.live = "on";
  });
})();
