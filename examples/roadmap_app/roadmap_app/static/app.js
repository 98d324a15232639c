// The roadmap page: submit a goal, follow progress over Server-Sent Events, review, browse.
"use strict";

const API = "/api/v1/roadmaps";
const $ = (id) => document.getElementById(id);

const state = {
  id: null,        // roadmap shown
  detail: null,    // last GET /roadmaps/{id}
  source: null,    // EventSource of the shown roadmap
  done: 0,
  total: 0,
  stages: {},      // position → {title, done, total}
  saved: new Set(), // concept ids announced saved (the DOM may be re-rendered from older data)
  refetchTimer: null,
  recentTimer: null,
};

const STATUS_TEXT = {
  pending: "Queued — waiting for a worker…",
  analyzing: "Analysing your goal…",
  designing: "Designing the curriculum…",
  human_review_pending: "Waiting for your review",
  review_submitted: "Review submitted…",
  generating_content: "Writing tutorials, resources and quizzes…",
  completed: "Completed",
  failed: "Failed",
  cancelled: "Cancelled",
};
const TERMINAL = ["completed", "failed", "cancelled"];
// A job may be running or queued on a roadmap in any other status: delete is refused then.
const DELETABLE = [...TERMINAL, "human_review_pending"];

function escapeHtml(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => (
    { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]
  ));
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    headers: { "Content-Type": "application/json" },
    ...options,
  });
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (!response.ok) {
    const error = new Error(describeError(body) || `HTTP ${response.status}`);
    error.status = response.status;
    error.body = body;
    throw error;
  }
  return body;
}

function describeError(body) {
  if (!body) return "";
  if (typeof body.detail === "string") return body.detail;
  if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg).join("; ");
  return "";
}

/* ---------- health ---------- */

async function refreshHealth() {
  const dot = $("health-dot");
  const text = $("health-text");
  try {
    const response = await fetch("/health");
    const body = await response.json();
    dot.className = "dot " + (body.status === "ok" ? "ok" : response.ok ? "degraded" : "down");
    const pool = body.database.pool || {};
    text.textContent = body.status === "ok"
      ? `healthy · ${pool.checked_out ?? 0}/${pool.capacity ?? "?"} connections in use`
      : (body.redis.ok ? "database unreachable" : "Redis unreachable — progress by polling");
  } catch {
    dot.className = "dot down";
    text.textContent = "API unreachable";
  }
}

/* ---------- create form ---------- */

function clearFormErrors() {
  for (const el of document.querySelectorAll("#create-form .field-error, #form-error")) el.textContent = "";
  for (const el of document.querySelectorAll("#create-form .invalid")) el.classList.remove("invalid");
}

async function submitGoal(event) {
  event.preventDefault();
  clearFormErrors();
  const button = $("submit");
  const hours = $("weekly_hours").value.trim();
  const payload = {
    goal: $("goal").value,
    level: $("level").value,
    weekly_hours: hours === "" ? 5 : Number(hours),
    review: $("review").checked,
  };
  button.disabled = true;
  button.textContent = "Submitting…";
  try {
    const accepted = await api(API, { method: "POST", body: JSON.stringify(payload) });
    $("goal").value = "";
    await showRoadmap(accepted.task_id);
    loadRecent();
  } catch (error) {
    if (error.status === 422 && Array.isArray(error.body?.detail)) {
      for (const item of error.body.detail) {
        const field = item.loc[item.loc.length - 1];
        const slot = $(`error-${field}`);
        if (slot) {
          slot.textContent = item.msg;
          $(field)?.classList.add("invalid");
        } else {
          $("form-error").textContent = item.msg;
        }
      }
    } else {
      $("form-error").textContent = error.message;
    }
  } finally {
    button.disabled = false;
    button.textContent = "Generate roadmap";
  }
}

/* ---------- recent list ---------- */

async function loadRecent() {
  const list = $("recent");
  try {
    const items = await api(`${API}?limit=12`);
    if (!items.length) { list.innerHTML = '<li class="muted">No roadmaps yet.</li>'; return; }
    list.innerHTML = items.map((r) => `
      <li><a href="?roadmap=${r.id}" data-id="${r.id}" class="${r.id === state.id ? "current" : ""}">
        <span class="goal">${escapeHtml(r.title || r.goal)}</span>
        <span class="meta"><span class="badge small ${r.status}">${escapeHtml(r.status.replace(/_/g, " "))}</span>
        <span class="count">${r.progress.total ? `${r.progress.done}/${r.progress.total} concepts` : escapeHtml(r.level)}</span></span>
      </a></li>`).join("");
    renderRecentProgress();
  } catch (error) {
    list.innerHTML = `<li class="muted">Could not load: ${escapeHtml(error.message)}</li>`;
  }
}

// The shown roadmap's entry in Recent follows the same event stream as the header, so the two
// never disagree ("0/26" in the list while the roadmap showed 8/26).
function renderRecentProgress() {
  const link = document.querySelector(`#recent a[data-id="${state.id}"]`);
  const count = link?.querySelector(".count");
  if (count && state.total) count.textContent = `${state.done}/${state.total} concepts`;
  const badge = link?.querySelector(".badge");
  if (badge && state.detail) {
    badge.className = `badge small ${state.detail.status}`;
    badge.textContent = state.detail.status.replace(/_/g, " ");
  }
}

/* ---------- roadmap view ---------- */

async function showRoadmap(id) {
  if (state.source) { state.source.close(); state.source = null; }
  state.id = id;
  state.detail = null;
  state.saved = new Set();
  history.replaceState(null, "", `?roadmap=${id}`);
  $("empty").classList.add("hidden");
  $("not-found").classList.add("hidden");
  $("roadmap").classList.remove("hidden");
  for (const a of document.querySelectorAll("#recent a")) a.classList.toggle("current", a.dataset.id === id);
  await refetch();
  if ($("not-found").classList.contains("hidden")) follow(id);
}

async function refetch() {
  const id = state.id;
  if (!id) return;
  try {
    const detail = await api(`${API}/${id}`);
    if (id !== state.id) return;
    state.detail = detail;
    state.done = detail.progress.done;
    state.total = detail.progress.total;
    state.stages = {};
    for (const s of detail.stages) state.stages[s.position] = { title: s.title, done: s.progress.done, total: s.progress.total };
    render();
  } catch (error) {
    if (id !== state.id) return;
    if (error.status === 404) { showNotFound(); return; }
    $("rm-title").textContent = "Roadmap not available";
    $("rm-goal").textContent = error.message;
  }
}

function scheduleRefetch(delay = 150) {
  clearTimeout(state.refetchTimer);
  state.refetchTimer = setTimeout(refetch, delay);
}

function follow(id) {
  const source = new EventSource(`${API}/${id}/events`);
  state.source = source;
  source.onmessage = (message) => {
    if (id !== state.id) return;
    let event;
    try { event = JSON.parse(message.data); } catch { return; }
    handleEvent(event);
  };
  source.onerror = () => {
    // The server ends the stream when the roadmap is finished; don't reconnect then.
    if (TERMINAL.includes(state.detail?.status)) source.close();
  };
}

function handleEvent(event) {
  switch (event.type) {
    case "snapshot": {
      // Concepts saved after the page read the roadmap and before the stream began come only
      // as this count: read the roadmap again to tick them.
      const behind = state.detail && event.done !== state.detail.progress.done;
      state.done = event.done;
      state.total = event.total;
      for (const s of event.stages) state.stages[s.position] = { title: s.title, done: s.done, total: s.total };
      setStatus(event.status, event.error);
      if (behind || (state.detail && event.curriculum_version !== state.detail.curriculum_version)) scheduleRefetch();
      renderProgress();
      renderRecentProgress();
      break;
    }
    case "status":
      $("recovering-banner").classList.add("hidden");
      setStatus(event.status, event.error);
      if (["human_review_pending", "generating_content", ...TERMINAL].includes(event.status)) scheduleRefetch();
      // A cancelled job saves what it had finished a moment later: read it again then.
      if (event.status === "cancelled") scheduleRefetch(2500);
      if (TERMINAL.includes(event.status)) state.source?.close();
      break;
    case "deleted":
      state.source?.close();
      showDeleted();
      break;
    case "curriculum":
      scheduleRefetch(50);
      break;
    case "recovering":
      // The sweeper re-queued a job whose worker died: say so instead of frozen spinners.
      $("recovering-banner").classList.remove("hidden");
      for (const el of document.querySelectorAll(".concept.working")) {
        el.classList.remove("working");
        const tag = el.querySelector(".step");
        if (tag) { tag.className = "hours"; tag.textContent = tag.dataset.hours || ""; }
      }
      break;
    case "concept_step":
      $("recovering-banner").classList.add("hidden");
      markConcept(event.concept_id, "working", event.step);
      break;
    case "concept_saved": {
      state.done = Math.max(state.done, event.done);
      state.total = event.total || state.total;
      const stage = state.stages[event.stage];
      if (stage) stage.done = Math.max(stage.done, event.stage_done);
      state.saved.add(event.concept_id);
      markConcept(event.concept_id, "done");
      renderProgress();
      renderRecentProgress();
      break;
    }
    default:
      break;
  }
}

function setStatus(status, error) {
  clearTimeout(state.recentTimer);
  state.recentTimer = setTimeout(loadRecent, 400);
  if (!state.detail) return;
  state.detail.status = status;
  if (error !== undefined) state.detail.error = error;
  renderHeader();
  renderProgress();
  renderRecentProgress();
}

function render() {
  renderHeader();
  renderProgress();
  renderCurriculum();
}

function renderHeader() {
  const d = state.detail;
  $("rm-title").textContent = d.title || d.goal;
  $("rm-goal").textContent = `${d.goal} · ${d.level} · ${d.weekly_hours} h/week`;
  $("rm-summary").textContent = d.summary || "";
  // Which curriculum this is, and the reviewer's words that asked for it (issue 22).
  const current = d.curriculum_versions?.at(-1);
  $("rm-version").classList.toggle("hidden", !d.curriculum_version);
  $("rm-version-number").textContent = `Curriculum version ${d.curriculum_version}`;
  $("rm-version-feedback").textContent = current?.version === d.curriculum_version && current.feedback
    ? `— redesigned after the feedback “${current.feedback}”`
    : "";
  const badge = $("rm-status");
  badge.textContent = d.status.replace(/_/g, " ");
  badge.className = `badge ${d.status}`;
  $("review-panel").classList.toggle("hidden", d.status !== "human_review_pending");
  $("failed-panel").classList.toggle("hidden", d.status !== "failed");
  $("cancelled-panel").classList.toggle("hidden", d.status !== "cancelled");
  $("cancel").classList.toggle("hidden", TERMINAL.includes(d.status));
  $("delete").classList.toggle("hidden", !DELETABLE.includes(d.status));
  $("export-md").href = `${API}/${d.id}/export`;
  $("export-json").href = `${API}/${d.id}/export?format=json`;
  // The learner's words first; the developer's detail behind the "Details" toggle.
  $("failed-message").textContent = d.failure_message || "Generation stopped before the end. Everything generated so far is saved.";
  $("failed-reason").textContent = d.error || "";
  $("resume").textContent = d.failed_concepts?.length ? "Retry failed concepts" : "Resume";
}

function renderProgress() {
  const d = state.detail;
  if (!d) return;
  const percent = state.total ? Math.floor((100 * state.done) / state.total) : (d.status === "completed" ? 100 : 0);
  $("progress-percent").textContent = `${percent}%`;
  const fill = $("progress-fill");
  fill.style.width = `${percent}%`;
  fill.classList.toggle("done", percent === 100);
  const label = STATUS_TEXT[d.status] || d.status;
  $("progress-text").textContent = state.total ? `${label} · ${state.done} of ${state.total} concepts` : label;
  const stages = Object.entries(state.stages).sort((a, b) => a[0] - b[0]);
  $("stage-bars").innerHTML = stages.map(([position, s]) => {
    const p = s.total ? Math.floor((100 * s.done) / s.total) : 0;
    return `<li data-stage="${position}"><div class="label"><b>${position}. ${escapeHtml(s.title)}</b><span>${s.done}/${s.total}</span></div>
      <div class="bar"><div class="fill ${p === 100 ? "done" : ""}" data-percent="${p}"></div></div></li>`;
  }).join("");
  // Widths through the CSSOM: the Content Security Policy refuses inline style attributes.
  for (const bar of document.querySelectorAll("#stage-bars .fill")) bar.style.width = `${bar.dataset.percent}%`;
}

function renderCurriculum() {
  const d = state.detail;
  const container = $("curriculum");
  if (!d.stages.length) { container.innerHTML = ""; return; }
  container.innerHTML = d.stages.map((stage) => `
    <section class="stage">
      <h3><span class="num">${stage.position}</span>${escapeHtml(stage.title)}</h3>
      <p class="desc">${escapeHtml(stage.description)}</p>
      <div class="modules">${stage.modules.map((module) => `
        <div class="module">
          <h4>${escapeHtml(module.title)}</h4>
          <ul class="concepts">${module.concepts.map((c) => {
            // A concept whose generation failed for good looks failed, with the learner's reason.
            const done = c.has_content || state.saved.has(c.id);
            const reason = done ? null : c.failure_reason;
            const kind = done ? "done" : reason ? "failed" : "";
            return `
            <li class="concept ${kind}" data-concept="${c.id}" title="${escapeHtml(reason || c.summary)}">
              <span class="state"></span><span class="name">${escapeHtml(c.title)}</span>
              ${reason ? '<span class="why">failed</span>' : ""}
              <span class="hours" data-hours="${c.estimated_hours}h">${c.estimated_hours}h</span>
              ${reason ? `<p class="reason">${escapeHtml(reason)}</p>` : ""}
            </li>`;
          }).join("")}
          </ul>
        </div>`).join("")}
      </div>
    </section>`).join("");
}

function markConcept(conceptId, kind, step) {
  const el = document.querySelector(`[data-concept="${conceptId}"]`);
  if (!el || el.classList.contains("done")) return;
  el.classList.add(kind);
  const tag = el.querySelector(".hours, .step");
  if (!tag) return;
  if (kind === "working") { tag.className = "step"; tag.textContent = step; }
  if (kind === "done") { el.classList.remove("working"); tag.className = "hours"; tag.textContent = tag.dataset.hours; }
}

/* ---------- review / resume ---------- */

async function review(approve) {
  const feedback = $("feedback").value.trim();
  $("review-error").textContent = "";
  $("feedback").classList.remove("invalid");
  if (!approve && !feedback) {
    $("review-error").textContent = "Say what should change before requesting changes.";
    $("feedback").classList.add("invalid");
    return;
  }
  try {
    await api(`${API}/${state.id}/review`, {
      method: "POST",
      body: JSON.stringify({ approve, feedback: feedback || null }),
    });
    $("feedback").value = "";
    setStatus("review_submitted");
    if (!state.source || state.source.readyState === EventSource.CLOSED) follow(state.id);
  } catch (error) {
    $("review-error").textContent = error.message;
  }
}

async function resume() {
  $("action-error").textContent = "";
  try {
    const accepted = await api(`${API}/${state.id}/resume`, { method: "POST" });
    setStatus(accepted.status, null);
    if (state.source) state.source.close();
    follow(state.id);
  } catch (error) {
    $("action-error").textContent = error.message;
  }
}

async function cancelRoadmap() {
  $("action-error").textContent = "";
  try {
    await api(`${API}/${state.id}/cancel`, { method: "POST" });
    setStatus("cancelled", null);
  } catch (error) {
    $("action-error").textContent = error.message;
  }
}

async function deleteRoadmap() {
  $("action-error").textContent = "";
  if (!window.confirm("Delete this roadmap with all its content? This cannot be undone.")) return;
  try {
    await api(`${API}/${state.id}`, { method: "DELETE" });
    showDeleted();
  } catch (error) {
    $("action-error").textContent = error.message;
  }
}

function showNotFound() {
  // No "pending" badge or "Waiting for a worker" bar for a roadmap that does not exist.
  if (state.source) { state.source.close(); state.source = null; }
  state.detail = null;
  $("roadmap").classList.add("hidden");
  $("empty").classList.add("hidden");
  $("not-found").classList.remove("hidden");
}

function showDeleted() {
  if (state.source) { state.source.close(); state.source = null; }
  state.id = null;
  state.detail = null;
  history.replaceState(null, "", location.pathname);
  $("roadmap").classList.add("hidden");
  $("empty").classList.remove("hidden");
  loadRecent();
}

/* ---------- concept dialog ---------- */

function findConcept(id) {
  for (const stage of state.detail?.stages || []) {
    for (const module of stage.modules) {
      for (const concept of module.concepts) {
        if (concept.id === id) return { stage, module, concept };
      }
    }
  }
  return null;
}

async function openConcept(id) {
  let found = findConcept(id);
  if (!found?.concept.content) { await refetch(); found = findConcept(id); }
  if (!found?.concept.content) return;
  const { stage, module, concept } = found;
  $("dlg-where").textContent = `Stage ${stage.position} · ${stage.title} · ${module.title}`;
  $("dlg-title").textContent = concept.title;
  // The tutorial is LLM output: the server renders it and sanitises the HTML (no script, event
  // handler or style survives), and the Content Security Policy would refuse inline script anyway.
  $("tab-tutorial").innerHTML = `<div class="tutorial">${concept.content.tutorial_html}</div>`;
  $("tab-resources").innerHTML = `<ul class="resources">${concept.content.resources.map((r) => `
    <li><span class="badge small">${escapeHtml(r.kind)}</span>
      <a href="${escapeHtml(r.url)}" target="_blank" rel="noopener noreferrer">${escapeHtml(r.title)}</a></li>`).join("")}</ul>`;
  $("tab-quiz").innerHTML = concept.content.quiz.map((q, i) => `
    <div class="question" data-answer="${q.answer}">
      <p>${i + 1}. ${escapeHtml(q.question)}</p>
      <div class="options">${q.options.map((o, j) => `<button type="button" class="option" data-index="${j}">${escapeHtml(o)}</button>`).join("")}</div>
      <p class="explanation hidden">${escapeHtml(q.explanation)}</p>
    </div>`).join("");
  selectTab("tutorial");
  $("dlg-error").textContent = "";
  $("concept-dialog").dataset.concept = String(concept.id);
  $("concept-dialog").showModal();
}

async function regenerateConcept() {
  const conceptId = $("concept-dialog").dataset.concept;
  $("dlg-error").textContent = "";
  try {
    const accepted = await api(`${API}/${state.id}/concepts/${conceptId}/regenerate`, { method: "POST" });
    $("concept-dialog").close();
    state.saved.delete(Number(conceptId));
    setStatus(accepted.status, null);
    if (state.source) state.source.close();
    follow(state.id);
    scheduleRefetch();
  } catch (error) {
    $("dlg-error").textContent = error.message;
  }
}

function selectTab(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.tab === name);
  for (const body of ["tutorial", "resources", "quiz"]) $(`tab-${body}`).classList.toggle("hidden", body !== name);
}

/* ---------- wiring ---------- */

document.addEventListener("DOMContentLoaded", () => {
  $("create-form").addEventListener("submit", submitGoal);
  $("refresh-list").addEventListener("click", loadRecent);
  $("approve").addEventListener("click", () => review(true));
  $("reject").addEventListener("click", () => review(false));
  $("resume").addEventListener("click", resume);
  $("resume-cancelled").addEventListener("click", resume);
  $("cancel").addEventListener("click", cancelRoadmap);
  $("delete").addEventListener("click", deleteRoadmap);
  $("dlg-close").addEventListener("click", () => $("concept-dialog").close());
  $("dlg-regenerate").addEventListener("click", regenerateConcept);
  $("concept-dialog").addEventListener("click", (event) => {
    if (event.target === $("concept-dialog")) $("concept-dialog").close();
  });
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => selectTab(tab.dataset.tab));
  $("recent").addEventListener("click", (event) => {
    const link = event.target.closest("a[data-id]");
    if (!link) return;
    event.preventDefault();
    showRoadmap(link.dataset.id);
  });
  $("curriculum").addEventListener("click", (event) => {
    const item = event.target.closest(".concept.done");
    if (item) openConcept(Number(item.dataset.concept));
  });
  $("tab-quiz").addEventListener("click", (event) => {
    const option = event.target.closest(".option");
    if (!option) return;
    const question = option.closest(".question");
    const answer = Number(question.dataset.answer);
    for (const button of question.querySelectorAll(".option")) {
      const index = Number(button.dataset.index);
      button.disabled = true;
      if (index === answer) button.classList.add("right");
      else if (button === option) button.classList.add("wrong");
    }
    question.querySelector(".explanation").classList.remove("hidden");
  });

  refreshHealth();
  setInterval(refreshHealth, 10000);
  loadRecent();
  const initial = new URLSearchParams(location.search).get("roadmap");
  if (initial) showRoadmap(initial);
});
