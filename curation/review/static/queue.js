// The curator's page: one item at a time, the next one already claimed and its images preloaded,
// so save-and-next shows the next item at once while the decision is sent in the background.
// While the page is open a heartbeat renews both leases (an open editor keeps its item); a lease
// lost anyway keeps the curator's text and offers to claim the item again.
// Everything from the server is shown through textContent (never innerHTML), in bidi-isolated elements.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);
  const leaseSeconds = Number($("workspace").dataset.leaseSeconds) || 600;
  const HEARTBEAT_MS = Math.max(2000, Math.min(60000, leaseSeconds * 1000 / 4));
  const queue = [];          // leased items: queue[0] is on screen
  let recent = [];           // the curator's latest decisions (the sidebar)
  let remaining = null;      // items still waiting, as the server last said
  let inflight = Promise.resolve();
  let claiming = false;
  let sending = 0;           // decisions on their way to the server
  let decided = 0;
  let editing = false;
  let shown = null;          // the lease token on screen (a re-render of the same item keeps an edit open)
  let lost = null;           // {item, title, text}: a lease lost with the curator's work

  async function api(path, body, attempts = 3) {
    for (let i = 0; ; i++) {
      try {
        const response = await fetch(path, {
          method: "POST", credentials: "same-origin",
          headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
          body: JSON.stringify(body || {}),
        });
        if (response.status === 401) { window.location.assign("/login"); throw new Error("logged out"); }
        const data = await response.json().catch(() => ({}));
        if (!response.ok) {
          const e = new Error(data.error || ("HTTP " + response.status));
          e.status = response.status; e.lost = !!data.lost; throw e;
        }
        return data;
      } catch (error) {  // network failures are retried: the lease token makes a resend harmless
        if (error.status || i + 1 >= attempts) throw error;
        await new Promise((r) => setTimeout(r, 300 * (i + 1)));
      }
    }
  }

  // A message; pieces given as {user: text} are someone's text (a title), isolated for bidi display.
  function say(...parts) {
    const m = $("message");
    m.replaceChildren(...parts.map((p) => (typeof p === "object" && p ? el("bdi", p.user, { dir: "auto" }) : String(p))));
    m.hidden = !m.textContent;
  }

  function leased(item) { item.deadline = Date.now() + (item.lease_seconds || leaseSeconds) * 1000; return item; }

  function add(item) {
    if (!item || queue.some((q) => q.item === item.item)) return;
    queue.push(leased(item));
    for (const src of item.images) { const img = new Image(); img.src = src; }  // preload
  }

  function showCounts() {
    $("remaining").textContent = remaining === null ? "…" : String(remaining);
    const item = queue[0];
    if (!item) { $("lease-left").textContent = "—"; return; }
    const left = Math.max(0, Math.round((item.deadline - Date.now()) / 1000));
    $("lease-left").textContent = Math.floor(left / 60) + ":" + String(left % 60).padStart(2, "0") + " left";
  }

  function render() {
    const item = queue[0];
    $("status").textContent = decided + " decided in this session" + (queue.length > 1 ? " · next item ready" : "");
    $("item").hidden = !item;
    $("empty").hidden = !!item || claiming || sending > 0;
    showCounts();
    if (item && item.token === shown) return;
    shown = item ? item.token : null;
    stopEditing();
    $("comment").value = "";
    if (!item) return;
    $("title").textContent = item.title;
    $("artist").textContent = item.artist;
    $("item-id").textContent = "#" + item.item;
    $("posts").textContent = item.posts;
    $("moods").textContent = item.moods.length ? item.moods.join(", ") : "none";
    $("provider").textContent = item.provider;
    $("match").textContent = item.match_score;
    $("match-reason").textContent = item.match_reason ? "(" + item.match_reason + ")" : "";
    $("reason").textContent = item.reason || "—";
    $("lyric").textContent = item.lyric || "(no lyric text)";
    const search = $("search");
    search.href = /^https:\/\//.test(item.search_url) ? item.search_url : "#";
    $("images").replaceChildren(...item.images.map((src) => {
      const img = document.createElement("img");
      img.src = src; img.alt = "post image"; img.loading = "eager";
      return img;
    }));
  }

  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }

  function renderRecent() {
    $("recent-list").replaceChildren(...recent.map((r) => {
      const li = el("li", undefined, { "data-item": r.item });
      li.append(el("bdi", r.title, { dir: "auto" }), " — ", el("bdi", r.artist, { dir: "auto" }), ": ",
        el("strong", r.decision, { class: "recent-decision" }));
      if (r.comment) li.append(" ", el("bdi", "“" + r.comment + "”", { dir: "auto", class: "recent-comment" }));
      li.append(" ");
      if (r.editable) {
        const change = el("button", "Change", { type: "button", class: "link change" });
        change.addEventListener("click", () => openRevise(r));
        li.append(change);
      } else li.append(el("span", "(" + (r.why_locked || "locked") + ")", { class: "small" }));
      return li;
    }));
  }

  function status(data) {
    if (typeof data.remaining === "number") remaining = data.remaining;
    if (Array.isArray(data.recent)) { recent = data.recent; renderRecent(); }
    showCounts();
  }

  async function topUp() {
    if (claiming) return;
    claiming = true;
    try {
      while (queue.length < 2) {
        const data = await api("/api/claim");
        if (!data.item || queue.some((q) => q.item === data.item.item)) break;
        add(data.item);
      }
    } catch (error) { say("Could not fetch an item: " + error.message); }
    finally { claiming = false; }
    render();
  }

  function showLost() {
    $("lost").hidden = !lost;
    if (!lost) return;
    $("lost-item").textContent = "#" + lost.item;
    $("lost-title").textContent = lost.title;
    $("lost-text").value = lost.text || "";
    $("lost-text").hidden = !lost.text;
    $("lost-kept").hidden = !lost.text;
  }

  function leaseLost(item, text) {
    lost = { item: item.item, title: item.title, text: text || (editing && queue[0] === item ? $("corrected").value : "") };
    const at = queue.indexOf(item);
    if (at >= 0) queue.splice(at, 1);
    showLost();
    render();
    if (queue.length < 2) topUp();
  }

  async function reclaim() {
    if (!lost) return;
    try {
      const data = await api("/api/reclaim", { item: lost.item });
      if (!data.item) { say("Someone else has item #" + lost.item + " now; your text is still below to copy."); return; }
      const text = lost.text;
      lost = null; showLost(); say("");
      const at = queue.findIndex((q) => q.item === data.item.item);
      if (at >= 0) queue.splice(at, 1);
      queue.unshift(leased(data.item));
      render();
      if (text) startEditing(text);
    } catch (error) { say("Could not claim it again: " + error.message); }
  }

  function decide(decision, text) {
    const item = queue.shift();
    if (!item) return;
    const comment = $("comment").value.trim() || null;
    say("");
    sending += 1;
    if (remaining !== null && remaining > 0) remaining -= 1;
    render();  // the next item shows now; the decision travels in the background
    inflight = inflight.then(async () => {
      try {
        const data = await api("/api/submit", { token: item.token, decision: decision, text: text, comment: comment,
                                                next: queue.length < 2 });
        decided += 1;
        recent.unshift({ item: item.item, title: item.title, artist: item.artist, decision: decision,
                         corrected_text: text || null, comment: comment, editable: true });
        recent = recent.slice(0, 10);
        renderRecent();
        add(data.next);
      } catch (error) {
        if (error.lost) leaseLost(item, text);
        else say("Item " + item.item + " (", { user: item.title }, "): not saved — " + error.message);
        if (remaining !== null) remaining += 1;
      }
      sending -= 1;
      if (queue.length < 2) await topUp(); else render();
    });
  }

  function skip() {
    const item = queue.shift();
    if (!item) return;
    say("");
    sending += 1;
    render();
    inflight = inflight.then(async () => {
      try { add((await api("/api/skip", { token: item.token, next: queue.length < 2 })).next); }
      catch (error) { if (!error.lost) say("Item " + item.item + ": not skipped — " + error.message); }
      sending -= 1;
      if (queue.length < 2) await topUp(); else render();
    });
  }

  async function heartbeat() {
    try {
      const held = queue.slice();
      const data = await api("/api/heartbeat", { tokens: held.map((q) => q.token) }, 1);
      for (const item of held) {
        if (!(item.token in data.leases)) continue;
        if (data.leases[item.token]) leased(item);
        else if (queue.includes(item)) {
          if (item === queue[0]) leaseLost(item);
          else { queue.splice(queue.indexOf(item), 1); topUp(); }  // the pre-claimed one: just get another
        }
      }
      status(data);
    } catch (error) { /* the next beat tries again; the timer shows what is left */ }
  }

  function startEditing(text) {
    const item = queue[0];
    if (!item) return;
    editing = true;
    $("editor").hidden = false;
    $("lyric").hidden = true;
    const area = $("corrected");
    area.value = typeof text === "string" ? text : (item.lyric || "");
    area.focus();
  }

  function stopEditing() {
    editing = false;
    // Hiding the editor does not move focus at once: blur it, or the next key (u, a, …) lands in the
    // hidden textarea and is ignored.
    $("corrected").blur();
    $("editor").hidden = true;
    $("lyric").hidden = false;
  }

  function saveEdit() {
    const text = $("corrected").value;
    if (!text.trim()) { say("A corrected lyric cannot be empty."); return; }
    decide("edit", text);
  }

  async function undo() {
    await inflight;
    try {
      const data = await api("/api/undo", {}, 1);
      if (data.item) {
        const at = queue.findIndex((q) => q.item === data.item.item);
        if (at >= 0) queue.splice(at, 1);
        queue.unshift(leased(data.item));
        decided = Math.max(0, decided - 1);
        recent = recent.filter((r) => r.item !== data.item.item);
        renderRecent();
        say("");
        render();
        $("comment").value = data.undone.comment || "";
        $("status").textContent = "Undone: " + data.undone.decision + " on #" + data.item.item + ". Decide again.";
      }
    } catch (error) { say("Nothing undone: " + error.message); }
  }

  let revising = null;
  function openRevise(entry) {
    revising = entry;
    $("revise").hidden = false;
    $("revise-item").textContent = "#" + entry.item;
    $("revise-decision").value = entry.decision;
    $("revise-text").value = entry.corrected_text || "";
    $("revise-comment").value = entry.comment || "";
    $("revise-decision").focus();
  }
  function closeRevise() { revising = null; $("revise").hidden = true; }
  async function saveRevise() {
    if (!revising) return;
    const decision = $("revise-decision").value;
    const text = decision === "edit" ? $("revise-text").value : null;
    try {
      const data = await api("/api/revise", { item: revising.item, decision: decision, text: text,
                                              comment: $("revise-comment").value.trim() || null }, 1);
      closeRevise();
      status(data);
      say("");
    } catch (error) { say("Not changed: " + error.message); }
  }

  function toggleHelp(open) {
    $("help").hidden = !open;
    if (open) $("help-close").focus(); else $("help-close").blur();
  }

  document.querySelectorAll("button.decide").forEach((button) => {
    button.addEventListener("click", () => {
      if (button.dataset.decision === "edit") startEditing(); else decide(button.dataset.decision);
    });
  });
  $("save-edit").addEventListener("click", saveEdit);
  $("cancel-edit").addEventListener("click", stopEditing);
  $("undo").addEventListener("click", undo);
  $("undo-empty").addEventListener("click", undo);
  $("skip").addEventListener("click", skip);
  $("again").addEventListener("click", topUp);
  $("reclaim").addEventListener("click", reclaim);
  $("lost-dismiss").addEventListener("click", () => { lost = null; showLost(); });
  $("revise-save").addEventListener("click", saveRevise);
  $("revise-cancel").addEventListener("click", closeRevise);
  $("help-open").addEventListener("click", () => toggleHelp(true));
  $("help-close").addEventListener("click", () => toggleHelp(false));
  $("comment").addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === "Escape") { event.preventDefault(); event.target.blur(); }
  });

  const keys = {};
  document.querySelectorAll("button.decide").forEach((b) => { keys[b.dataset.key] = b.dataset.decision; });
  document.addEventListener("keydown", (event) => {
    if (!$("help").hidden) {
      if (event.key === "Escape" || event.key === "?") { event.preventDefault(); toggleHelp(false); }
      return;
    }
    if (editing) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); saveEdit(); }
      else if (event.key === "Escape") { event.preventDefault(); stopEditing(); }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT")) return;
    if (event.key === "?") { event.preventDefault(); toggleHelp(true); return; }
    const key = event.key.toLowerCase();
    if (key === "u") { event.preventDefault(); undo(); return; }
    if (!queue[0]) return;
    if (key === "s") { event.preventDefault(); $("search").click(); return; }
    if (key === "k") { event.preventDefault(); skip(); return; }
    if (key === "c") { event.preventDefault(); $("comment").focus(); return; }
    const decision = keys[key];
    if (!decision) return;
    event.preventDefault();
    if (decision === "edit") startEditing(); else decide(decision);
  });

  // Leaving the page gives the claimed items back at once (they come back to this curator first).
  window.addEventListener("pagehide", () => {
    const body = new FormData();
    body.append("csrf", csrf);
    queue.forEach((q) => body.append("token", q.token));
    if (queue.length) navigator.sendBeacon("/api/release", body);
  });

  setInterval(showCounts, 1000);
  setInterval(heartbeat, HEARTBEAT_MS);
  (async () => {
    try {
      const data = await api("/api/resume");
      data.items.forEach(add);
      status(data);
    } catch (error) { say("Could not load your items: " + error.message); }
    render();
    topUp();
  })();
})();
