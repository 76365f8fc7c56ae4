// The tidings admin page. Every figure comes from the server API (POST /admin/api/<method>),
// so it covers every node of a deployment. Nothing from the server is inserted as HTML:
// channel names, users and data are set as text.
"use strict";

const REFRESH_MS = 3000;
const HISTORY_LIMIT = 10;

const $ = (id) => document.getElementById(id);
let selectedChannel = null;
let timer = null;

class LoggedOut extends Error {}

async function call(method, params = {}) {
  const response = await fetch(`/admin/api/${method}`, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(params),
  });
  if (response.status === 401) {
    showLogin();
    throw new LoggedOut("log in first");
  }
  const answer = await response.json();
  if (answer.error) {
    const { code, message, detail } = answer.error;
    throw new Error(`${code} ${message}${detail ? `: ${detail}` : ""}`);
  }
  return answer.result;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function uptime(seconds) {
  const parts = [];
  for (const [size, unit] of [[86400, "d"], [3600, "h"], [60, "m"]]) {
    if (seconds >= size) {
      parts.push(`${Math.floor(seconds / size)}${unit}`);
      seconds %= size;
    }
  }
  if (!parts.length || seconds) parts.push(`${seconds}s`);
  return parts.slice(0, 2).join(" ");
}

function showLogin() {
  clearInterval(timer);
  timer = null;
  $("dashboard").hidden = true;
  $("logout").hidden = true;
  $("summary").textContent = "";
  $("login").hidden = false;
  $("password").focus();
}

function showDashboard() {
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("logout").hidden = false;
  refresh();
  if (timer === null) timer = setInterval(refresh, REFRESH_MS);
}

async function refresh() {
  try {
    await Promise.all([refreshNodes(), refreshChannels(), refreshChannel()]);
    document.body.dataset.refreshed = String(Date.now());
  } catch (error) {
    if (!(error instanceof LoggedOut)) $("summary").textContent = `refresh failed: ${error.message}`;
  }
}

async function refreshNodes() {
  const { nodes } = await call("info");
  nodes.sort((a, b) => a.name.localeCompare(b.name));
  const body = $("nodes").tBodies[0];
  body.replaceChildren();
  let connections = 0;
  for (const node of nodes) {
    const row = body.insertRow();
    row.dataset.node = node.uid;
    cell(row, node.name);
    cell(row, node.num_clients, "number");
    cell(row, node.num_users, "number");
    cell(row, node.num_subs, "number");
    cell(row, node.num_channels, "number");
    cell(row, uptime(node.uptime), "number");
    cell(row, node.version);
    connections += node.num_clients;
  }
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  $("summary").textContent = `${plural(nodes.length, "node")}, ${plural(connections, "connection")}`;
}

async function refreshChannels() {
  const filter = $("channel-filter").value.trim();
  const { channels } = await call("channels", filter ? { pattern: filter } : {});
  const names = Object.keys(channels).sort();
  const body = $("channels").tBodies[0];
  body.replaceChildren();
  for (const name of names) {
    const row = body.insertRow();
    row.dataset.channel = name;
    if (name === selectedChannel) row.classList.add("selected");
    const link = document.createElement("button");
    link.type = "button";
    link.className = "link";
    link.textContent = name;
    link.addEventListener("click", () => select(name));
    row.insertCell().append(link);
    cell(row, channels[name].num_clients, "number");
  }
  $("channels-empty").hidden = names.length > 0;
}

function select(channel) {
  selectedChannel = channel;
  $("channel-card").hidden = false;
  $("channel-name").textContent = channel;
  $("publish-channel").value = channel;
  for (const row of $("channels").tBodies[0].rows) {
    row.classList.toggle("selected", row.dataset.channel === channel);
  }
  refreshChannel().catch(() => {});
}

async function refreshChannel() {
  const channel = selectedChannel;
  if (channel === null) return;
  const [presence, history] = await Promise.allSettled([
    call("presence", { channel }),
    call("history", { channel, limit: HISTORY_LIMIT, reverse: true }),
  ]);
  if (channel !== selectedChannel) return;
  const body = $("presence").tBodies[0];
  body.replaceChildren();
  if (presence.status === "fulfilled") {
    const entries = Object.values(presence.value.presence);
    entries.sort((a, b) => (a.user || "").localeCompare(b.user || ""));
    for (const entry of entries) {
      const row = body.insertRow();
      row.dataset.client = entry.client;
      cell(row, entry.user || "(anonymous)");
      cell(row, entry.client, "mono");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "small danger";
      button.textContent = "Disconnect";
      button.addEventListener("click", () => disconnect(entry.user, entry.client));
      row.insertCell().append(button);
    }
    $("presence-note").textContent = entries.length ? "" : "Nobody is present.";
  } else {
    $("presence-note").textContent = `No presence: ${presence.reason.message}`;
  }
  const list = $("history");
  list.replaceChildren();
  if (history.status === "fulfilled") {
    for (const publication of history.value.publications) {
      const item = document.createElement("li");
      item.value = publication.offset;
      const data = document.createElement("code");
      data.textContent = JSON.stringify(publication.data);
      item.append(data);
      list.append(item);
    }
    const { publications, offset, epoch } = history.value;
    $("history-note").textContent = publications.length
      ? `offset ${offset}, epoch ${epoch}`
      : "No publication in history.";
  } else {
    $("history-note").textContent = `No history: ${history.reason.message}`;
  }
}

async function disconnect(user, client = "") {
  const result = $("disconnect-result");
  result.className = "result";
  try {
    await call("disconnect", client ? { user, client } : { user });
    result.textContent = client ? `Disconnected ${user} (${client}).` : `Disconnected ${user}.`;
    refresh();
  } catch (error) {
    if (error instanceof LoggedOut) return;
    result.className = "result error";
    result.textContent = error.message;
  }
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const response = await fetch("/admin/login", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ password: $("password").value }),
  });
  $("password").value = "";
  if (response.ok) {
    $("login-error").textContent = "";
    showDashboard();
  } else {
    const answer = await response.json().catch(() => ({}));
    $("login-error").textContent = answer.error ? answer.error.detail : `HTTP ${response.status}`;
  }
});

$("logout").addEventListener("click", async () => {
  await fetch("/admin/logout", { method: "POST", credentials: "same-origin" });
  showLogin();
});

$("channel-filter").addEventListener("input", () => refreshChannels().catch(() => {}));

$("publish-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const result = $("publish-result");
  result.className = "result";
  let data;
  try {
    data = JSON.parse($("publish-data").value);
  } catch (error) {
    result.className = "result error";
    result.textContent = `Data is not JSON: ${error.message}`;
    return;
  }
  const channel = $("publish-channel").value.trim();
  try {
    const answer = await call("publish", { channel, data });
    result.textContent = answer.offset
      ? `Published to ${channel} at offset ${answer.offset}.`
      : `Published to ${channel}.`;
    refresh();
  } catch (error) {
    if (error instanceof LoggedOut) return;
    result.className = "result error";
    result.textContent = error.message;
  }
});

$("disconnect-form").addEventListener("submit", (event) => {
  event.preventDefault();
  disconnect($("disconnect-user").value.trim(), $("disconnect-client").value.trim());
});

// A valid session cookie goes straight to the dashboard; otherwise the login form.
call("info").then(showDashboard, (error) => {
  if (!(error instanceof LoggedOut)) showLogin();
});
