// The hiclaw console's only script: live chat. New messages of the open room arrive as
// server-sent events (/chat/stream) holding HTML the server made safe; a message already shown
// is dropped. Every page works without this script (reload to see new messages).
(function () {
  "use strict";
  var list = document.getElementById("messages");
  var form = document.querySelector("form.send");
  var text = form ? form.querySelector("textarea") : null;
  if (text) {
    text.addEventListener("keydown", function (event) { // Enter sends, Shift+Enter is a new line
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        if (text.value.trim()) { form.requestSubmit(); }
      }
    });
    text.focus();
  }
  if (!list || !window.EventSource) { return; }
  var live = document.getElementById("live");
  var shown = function (id) {
    var items = list.querySelectorAll("li[data-event]");
    for (var i = 0; i < items.length; i++) { if (items[i].getAttribute("data-event") === id) { return true; } }
    return false;
  };
  var bottom = function () { window.scrollTo(0, document.body.scrollHeight); };
  bottom();
  var url = "/chat/stream?room=" + encodeURIComponent(list.getAttribute("data-room")) +
            "&since=" + encodeURIComponent(list.getAttribute("data-since"));
  var source = new EventSource(url);
  source.addEventListener("open", function () { if (live) { live.textContent = "live"; live.className = "live on"; } });
  source.addEventListener("error", function () { if (live) { live.textContent = "reconnecting…"; live.className = "live"; } });
  source.addEventListener("mention", function (event) { // you were mentioned in another room
    var notices = document.getElementById("notices");
    var holder = document.createElement("template");
    holder.innerHTML = event.data;
    var item = holder.content.firstElementChild;
    if (notices && item) { notices.appendChild(item); }
  });
  source.addEventListener("reload", function () { source.close(); window.location.reload(); });
  source.addEventListener("message", function (event) {
    var holder = document.createElement("template");
    holder.innerHTML = event.data;
    var item = holder.content.firstElementChild;
    if (!item || shown(item.getAttribute("data-event"))) { return; }
    var empty = document.getElementById("no-messages");
    if (empty) { empty.remove(); }
    list.appendChild(item);
    bottom();
  });
}());
