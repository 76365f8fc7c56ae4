// The tidings demo: a chat room on the "demo" namespace, with centrifuge-js from npm.
// Anonymous access works only while the server runs without a token secret (demo mode).
(function () {
  "use strict";
  const channel = "demo:lobby";
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const $ = (id) => document.getElementById(id);
  const names = new Map(); // client id -> name, learned from the messages people send
  const seenOffsets = new Set();
  const online = new Map();

  const nameInput = $("name");
  nameInput.value = localStorage.getItem("tidings-demo-name") || "guest-" + Math.floor(Math.random() * 1000);
  nameInput.addEventListener("change", () => localStorage.setItem("tidings-demo-name", nameInput.value));
  $("channel").textContent = channel;

  const centrifuge = new Centrifuge(scheme + "://" + location.host + "/connection/websocket");
  const sub = centrifuge.newSubscription(channel, { joinLeave: true, recoverable: true });

  function setStatus(state) {
    const status = $("status");
    status.dataset.state = state;
    status.textContent = state;
    document.body.dataset.state = state;
  }
  function shortId(client) { return (client || "").slice(0, 8); }
  function who(info) { return (info && names.get(info.client)) || "visitor " + shortId(info && info.client); }

  function addLine(html, cls) {
    const list = $("messages");
    const li = document.createElement("li");
    if (cls) li.className = cls;
    li.append(...html);
    list.append(li);
    list.scrollTop = list.scrollHeight;
    return li;
  }
  function text(value, cls) {
    const span = document.createElement("span");
    span.textContent = value;
    if (cls) span.className = cls;
    return span;
  }
  function showMessage(pub, fromHistory) {
    if (pub.offset && seenOffsets.has(pub.offset)) return;
    if (pub.offset) seenOffsets.add(pub.offset);
    const data = pub.data || {};
    if (pub.info && data.name) names.set(pub.info.client, String(data.name));
    const li = addLine([text(String(data.name || "?") + ":", "who"), text(String(data.text || ""))],
      "message" + (fromHistory ? " history" : ""));
    li.dataset.offset = pub.offset || "";
    renderOnline();
  }
  function renderOnline() {
    const list = $("online");
    list.replaceChildren(...[...online.values()].map((info) => {
      const li = document.createElement("li");
      li.textContent = info.client === centrifuge._client ? who(info) + " (you)" : who(info);
      return li;
    }));
    $("online-count").textContent = String(online.size);
  }

  centrifuge.on("connecting", () => setStatus("connecting"));
  centrifuge.on("connected", () => setStatus("connected"));
  centrifuge.on("disconnected", () => setStatus("disconnected"));

  sub.on("publication", (ctx) => showMessage({ data: ctx.data, info: ctx.info, offset: ctx.offset }, false));
  sub.on("join", (ctx) => {
    online.set(ctx.info.client, ctx.info);
    addLine([text(who(ctx.info) + " joined")], "event join");
    renderOnline();
  });
  sub.on("leave", (ctx) => {
    online.delete(ctx.info.client);
    addLine([text(who(ctx.info) + " left")], "event leave");
    renderOnline();
  });
  sub.on("subscribed", async (ctx) => {
    if (!ctx.wasRecovering || !ctx.recovered) {
      // A first visit (or history that no longer reaches): show the recent messages.
      const history = await sub.history({ limit: 50, reverse: true });
      history.publications.reverse().forEach((pub) => showMessage(pub, true));
    }
    const presence = await sub.presence();
    online.clear();
    Object.values(presence.clients).forEach((info) => online.set(info.client, info));
    renderOnline();
    document.body.dataset.subscribed = "true";
  });

  $("composer").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("text");
    const value = input.value.trim();
    if (!value) return;
    input.value = "";
    try {
      await sub.publish({ name: nameInput.value.trim() || "guest", text: value });
    } catch (err) {
      addLine([text("not sent: " + (err.message || err.code))], "event error");
    }
  });

  window.tidingsDemo = { centrifuge, sub };
  sub.subscribe();
  centrifuge.connect();
})();
