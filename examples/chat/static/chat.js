// The chat example's page: centrifuge-js (served by tidings at /vendor/centrifuge.js).
//
// chat:ROOM carries the messages (history, recovery, presence, join/leave);
// typing:ROOM the "is typing" signals (no history: ephemeral). The name typed on
// the entry screen goes to the server in the connect command's data; app.py's
// on_connect puts it in the connection's info, which every publication, join,
// leave and presence entry then carries.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const ROOM = /^[a-z0-9][a-z0-9-]{0,31}$/;
  const TYPING_EVERY_MS = 2000; // a typist repeats "typing" this often...
  const TYPING_FOR_MS = 4000; // ...and is shown as typing this long after the last one
  const HISTORY_ON_ENTRY = 50;

  const store = {
    get(key) { try { return localStorage.getItem(key); } catch (e) { return null; } },
    set(key, value) { try { localStorage.setItem(key, value); } catch (e) { /* private mode */ } },
  };
  function randomId() {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // No accounts in this example: a random id per browser stands for the user.
  const me = { user: store.get("tidings-chat-user") || randomId(), name: "", client: "" };
  store.set("tidings-chat-user", me.user);

  let centrifuge = null;
  let room = null;
  let typingSentAt = 0;

  // ------------------------------------------------------------------ connection

  function setStatus(state) {
    $("status").dataset.state = state;
    $("status").textContent = state;
    document.body.dataset.state = state;
  }

  function showEntry(error) {
    $("chat").hidden = true;
    $("entry").hidden = false;
    $("entry-name").value = store.get("tidings-chat-name") || "";
    $("entry-error").textContent = error || "";
    $("entry-name").focus();
  }

  function start(name) {
    $("entry").hidden = true;
    $("chat").hidden = false;
    centrifuge = new Centrifuge(
      (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/connection/websocket",
      { data: { name: name, user: me.user } },
    );
    centrifuge.on("state", (ctx) => setStatus(ctx.newState));
    centrifuge.on("connected", (ctx) => {
      me.client = ctx.client;
      me.name = ctx.data.name;
      $("my-name").textContent = me.name;
      loadRooms();
    });
    centrifuge.on("disconnected", (ctx) => {
      if (ctx.code >= 400 && ctx.code < 2000) {
        // on_connect refused the entry (a ClientError from app.py): say why.
        leave();
        showEntry(ctx.reason);
      }
    });
    enterRoom(roomFromHash());
    centrifuge.connect();
    window.chat = { centrifuge: centrifuge, me: me, get room() { return room; } };
  }

  function leave() {
    if (centrifuge) centrifuge.disconnect();
    centrifuge = null;
    room = null;
    delete document.body.dataset.subscribed;
    setStatus("disconnected");
  }

  // ------------------------------------------------------------------ rooms

  function roomFromHash() {
    const name = decodeURIComponent(location.hash.slice(1));
    return ROOM.test(name) ? name : "lobby";
  }

  function enterRoom(name) {
    if (room) {
      for (const sub of [room.sub, room.typingSub]) {
        sub.unsubscribe();
        centrifuge.removeSubscription(sub);
      }
    }
    delete document.body.dataset.subscribed;
    $("messages").replaceChildren();
    $("notice").textContent = "";
    $("room-title").textContent = "#" + name;
    document.title = "#" + name + " · tidings chat";
    document.body.dataset.room = name;
    room = {
      name: name,
      sub: centrifuge.newSubscription("chat:" + name, { joinLeave: true, recoverable: true }),
      typingSub: centrifuge.newSubscription("typing:" + name),
      epoch: "",
      offsets: new Set(),
      people: new Map(), // client id -> ClientInfo
      typists: new Map(), // client id -> { name, until }
    };
    const current = room;
    const sub = current.sub;

    sub.on("publication", (ctx) => {
      current.typists.delete(ctx.info && ctx.info.client);
      renderTyping();
      addMessage(ctx);
    });
    sub.on("join", (ctx) => {
      current.people.set(ctx.info.client, ctx.info);
      if (ctx.info.client !== me.client) addEvent(nameOf(ctx.info) + " joined", "join");
      renderPeople();
      loadRoomsSoon();
    });
    sub.on("leave", (ctx) => {
      current.people.delete(ctx.info.client);
      current.typists.delete(ctx.info.client);
      addEvent(nameOf(ctx.info) + " left", "leave");
      renderPeople();
      renderTyping();
      loadRoomsSoon();
    });
    sub.on("subscribing", () => { delete document.body.dataset.subscribed; });
    sub.on("subscribed", async (ctx) => {
      const epoch = ctx.streamPosition ? ctx.streamPosition.epoch : "";
      if (current.epoch && epoch !== current.epoch) {
        // The room's stream was reset (a restarted server on the memory broker):
        // its offsets start again, so start the list again too.
        $("messages").replaceChildren();
        current.offsets.clear();
      }
      current.epoch = epoch;
      try {
        if (!ctx.wasRecovering || !ctx.recovered) {
          // Entering, or back after too long: the recent messages. Live ones that
          // arrive meanwhile are merged by offset, never shown twice.
          const history = await sub.history({ limit: HISTORY_ON_ENTRY, reverse: true });
          history.publications.forEach(addMessage);
        }
        const presence = await sub.presence();
        current.people = new Map(Object.values(presence.clients).map((info) => [info.client, info]));
        renderPeople();
      } catch (err) {
        if (room !== current) return;
        $("notice").textContent = "could not load the room: " + explain(err);
        return;
      }
      if (room === current) document.body.dataset.subscribed = "true";
      loadRooms();
    });
    sub.on("error", (ctx) => { $("notice").textContent = explain(ctx.error); });

    current.typingSub.on("publication", (ctx) => {
      if (!ctx.info || ctx.info.client === me.client) return;
      if (ctx.data.typing) {
        current.typists.set(ctx.info.client, { name: nameOf(ctx.info), until: Date.now() + TYPING_FOR_MS });
      } else {
        current.typists.delete(ctx.info.client);
      }
      renderTyping();
    });

    sub.subscribe();
    current.typingSub.subscribe();
    renderPeople();
    renderTyping();
    renderRooms(lastRooms);
  }

  let lastRooms = [];
  let roomsTimer = 0;
  function loadRoomsSoon() { // joins and leaves change the counts: one RPC for a burst of them
    clearTimeout(roomsTimer);
    roomsTimer = setTimeout(loadRooms, 300);
  }
  async function loadRooms() {
    if (!centrifuge || centrifuge.state !== "connected") return;
    try {
      const reply = await centrifuge.rpc("rooms", {});
      lastRooms = reply.data;
      renderRooms(lastRooms);
    } catch (err) { /* the list stays as it was; the next refresh tries again */ }
  }

  function renderRooms(rooms) {
    const names = rooms.map((r) => r.name);
    if (room && !names.includes(room.name)) rooms = rooms.concat([{ name: room.name, people: 0 }]);
    $("rooms").replaceChildren(...rooms.map((r) => {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = "#" + r.name;
      a.setAttribute("aria-current", String(room !== null && r.name === room.name));
      a.append(text("#" + r.name), text(String(r.people), "count"));
      li.append(a);
      return li;
    }));
  }

  // ------------------------------------------------------------------ messages

  function text(value, cls) {
    const span = document.createElement("span");
    span.textContent = value;
    if (cls) span.className = cls;
    return span;
  }

  function nameOf(info) {
    return (info && info.connInfo && info.connInfo.name) || "someone";
  }

  function atBottom(list) {
    return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  }

  function addMessage(pub) {
    const offset = pub.offset || 0;
    if (offset && room.offsets.has(offset)) return;
    if (offset) room.offsets.add(offset);
    const mine = Boolean(pub.info && pub.info.user === me.user);
    const li = document.createElement("li");
    li.className = "message" + (mine ? " mine" : "");
    li.dataset.offset = String(offset);
    const time = document.createElement("time");
    const sentAt = new Date(pub.data.sent_at || Date.now());
    time.dateTime = sentAt.toISOString();
    time.textContent = sentAt.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    li.append(text(pub.info ? nameOf(pub.info) : "tidings", "who"), text(pub.data.text, "text"), time);

    const list = $("messages");
    const follow = mine || atBottom(list);
    let before = null;
    if (offset) {
      for (const other of list.querySelectorAll("li.message")) {
        if (Number(other.dataset.offset) > offset) { before = other; break; }
      }
    }
    list.insertBefore(li, before);
    if (follow) list.scrollTop = list.scrollHeight;
  }

  function addEvent(message, kind) {
    const list = $("messages");
    const follow = atBottom(list);
    const li = document.createElement("li");
    li.className = "event " + kind;
    li.textContent = message;
    list.append(li);
    if (follow) list.scrollTop = list.scrollHeight;
  }

  function renderPeople() {
    const users = new Map(); // one line per user, however many tabs they have open
    for (const info of room ? room.people.values() : []) users.set(info.user, nameOf(info));
    const sorted = [...users].sort((a, b) => a[1].localeCompare(b[1]));
    $("people").replaceChildren(...sorted.map(([user, name]) => {
      const li = document.createElement("li");
      li.textContent = user === me.user ? name + " (you)" : name;
      if (user === me.user) li.className = "me";
      return li;
    }));
    $("people-count").textContent = String(users.size);
  }

  function renderTyping() {
    const now = Date.now();
    const names = [];
    for (const [client, typist] of room ? room.typists : []) {
      if (typist.until < now) room.typists.delete(client);
      else if (!names.includes(typist.name)) names.push(typist.name);
    }
    let line = "";
    if (names.length === 1) line = names[0] + " is typing…";
    else if (names.length === 2) line = names[0] + " and " + names[1] + " are typing…";
    else if (names.length > 2) line = names.length + " people are typing…";
    $("typing").textContent = line;
  }
  setInterval(renderTyping, 1000);
  setInterval(loadRooms, 10000);

  function explain(err) {
    const message = (err && err.message) || "";
    if (err && err.code === 107) {
      // The typed channel's refusal names the rule that failed (app.py, ChatMessage).
      const longest = /length <= (\d+)/.exec(message);
      if (longest) return "too long: at most " + longest[1] + " characters";
      if (/length >= 1|regex/.test(message)) return "write something first";
    }
    return message || "error " + (err && err.code);
  }

  // ------------------------------------------------------------------ the page

  $("entry").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("entry-name").value.trim();
    if (!name) return;
    store.set("tidings-chat-name", name);
    start(name);
  });

  $("change-name").addEventListener("click", (event) => {
    event.preventDefault();
    leave();
    showEntry("");
  });

  window.addEventListener("hashchange", () => {
    const name = roomFromHash();
    if (centrifuge && (!room || room.name !== name)) enterRoom(name);
  });

  $("new-room").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("new-room-name").value.trim().toLowerCase().replace(/\s+/g, "-");
    if (!ROOM.test(name)) {
      $("notice").textContent = "a room name is 1-32 lowercase letters, digits or dashes";
      return;
    }
    $("new-room-name").value = "";
    location.hash = name;
  });

  $("text").addEventListener("input", () => {
    const typing = $("text").value.trim() !== "";
    const now = Date.now();
    if (!room) return;
    if (typing && now - typingSentAt > TYPING_EVERY_MS) {
      typingSentAt = now;
      room.typingSub.publish({ typing: true }).catch(() => {});
    } else if (!typing && typingSentAt) {
      typingSentAt = 0;
      room.typingSub.publish({ typing: false }).catch(() => {});
    }
  });

  $("composer").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("text");
    const value = input.value;
    if (value === "" || !room) return;
    $("notice").textContent = "";
    try {
      await room.sub.publish({ text: value });
      if (input.value === value) input.value = "";
      if (typingSentAt) {
        typingSentAt = 0;
        room.typingSub.publish({ typing: false }).catch(() => {});
      }
    } catch (err) {
      // Refused by the server (the typed channel's rules) or not delivered: say so,
      // and keep the text so it can be fixed and sent again.
      $("notice").textContent = "Not sent: " + explain(err);
    }
  });

  showEntry("");
})();
