// The curator's page: one item at a time, the next one already claimed and its images preloaded,
// so save-and-next shows the next item at once while the decision is sent in the background.
// Everything from the server is shown through textContent (never innerHTML).
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);
  const queue = [];          // leased items: queue[0] is on screen
  let inflight = Promise.resolve();
  let claiming = false;
  let sending = 0;           // decisions on their way to the server
  let decided = 0;
  let editing = false;
  let shown = null;          // the lease token on screen (a re-render of the same item keeps an edit open)

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
        if (!response.ok) { const e = new Error(data.error || ("HTTP " + response.status)); e.status = response.status; throw e; }
        return data;
      } catch (error) {  // network failures are retried: the lease token makes a resend harmless
        if (error.status || i + 1 >= attempts) throw error;
        await new Promise((r) => setTimeout(r, 300 * (i + 1)));
      }
    }
  }

  function say(text) { const m = $("message"); m.textContent = text; m.hidden = !text; }

  function preload(item) { for (const src of item.images) { const img = new Image(); img.src = src; } }

  function render() {
    const item = queue[0];
    $("status").textContent = decided + " decided in this session" + (queue.length > 1 ? " · next item ready" : "");
    $("item").hidden = !item;
    $("empty").hidden = !!item || claiming || sending > 0;
    if (item && item.token === shown) return;
    shown = item ? item.token : null;
    stopEditing();
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
    const images = $("images");
    images.replaceChildren(...item.images.map((src) => {
      const img = document.createElement("img");
      img.src = src; img.alt = "post image"; img.loading = "eager";
      return img;
    }));
  }

  async function topUp() {
    if (claiming) return;
    claiming = true;
    try {
      while (queue.length < 2) {
        const data = await api("/api/claim");
        if (!data.item) break;
        if (!queue.some((q) => q.item === data.item.item)) { queue.push(data.item); preload(data.item); }
      }
    } catch (error) { say("Could not fetch an item: " + error.message); }
    finally { claiming = false; }
    render();
  }

  function decide(decision, text) {
    const item = queue.shift();
    if (!item) return;
    say("");
    sending += 1;
    render();  // the next item shows now; the decision travels in the background
    inflight = inflight.then(async () => {
      try {
        const data = await api("/api/submit", { token: item.token, decision: decision, text: text, next: queue.length < 2 });
        decided += 1;
        if (data.next && !queue.some((q) => q.item === data.next.item)) { queue.push(data.next); preload(data.next); }
      } catch (error) {
        say("Item " + item.item + " (" + item.title + "): not saved — " + error.message);
      }
      sending -= 1;
      if (queue.length < 2) await topUp(); else render();
    });
  }

  function startEditing() {
    const item = queue[0];
    if (!item) return;
    editing = true;
    $("editor").hidden = false;
    $("lyric").hidden = true;
    const area = $("corrected");
    area.value = item.lyric || "";
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
        queue.unshift(data.item);
        decided = Math.max(0, decided - 1);
        say("");
        render();
        $("status").textContent = "Undone: " + data.undone.decision + " on #" + data.item.item + ". Decide again.";
      }
    } catch (error) { say("Nothing undone: " + error.message); }
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
  $("again").addEventListener("click", topUp);

  const keys = {};
  document.querySelectorAll("button.decide").forEach((b) => { keys[b.dataset.key] = b.dataset.decision; });
  document.addEventListener("keydown", (event) => {
    if (editing) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); saveEdit(); }
      else if (event.key === "Escape") { event.preventDefault(); stopEditing(); }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT")) return;
    const key = event.key.toLowerCase();
    if (key === "u") { event.preventDefault(); undo(); return; }
    if (key === "s" && queue[0]) { event.preventDefault(); $("search").click(); return; }
    const decision = keys[key];
    if (!decision || !queue[0]) return;
    event.preventDefault();
    if (decision === "edit") startEditing(); else decide(decision);
  });

  // Leaving the page gives the claimed items back at once instead of when their leases expire.
  window.addEventListener("pagehide", () => {
    const body = new FormData();
    body.append("csrf", csrf);
    queue.forEach((q) => body.append("token", q.token));
    if (queue.length) navigator.sendBeacon("/api/release", body);
  });

  topUp();
})();
