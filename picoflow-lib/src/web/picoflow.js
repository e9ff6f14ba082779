// PicoFlow web UI: keeps a live page current and follows logs. At most one request a
// second, and none once the execution has ended.
"use strict";
(function () {
  var PERIOD = 1000;

  function refresh() {
    var main = document.getElementById("live");
    if (!main || main.getAttribute("data-live") !== "true") return;
    fetch(location.href, { cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("live");
        if (!fresh) return;
        main.innerHTML = fresh.innerHTML;
        main.setAttribute("data-live", fresh.getAttribute("data-live"));
      })
      .catch(function () {})
      .then(function () { setTimeout(refresh, PERIOD); });
  }

  function follow() {
    var pre = document.getElementById("log");
    if (!pre || pre.getAttribute("data-follow") !== "true") return;
    var offset = pre.getAttribute("data-offset") || "0";
    fetch(pre.getAttribute("data-src") + "?offset=" + encodeURIComponent(offset), { cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (chunk) {
        var atEnd = window.innerHeight + window.scrollY >= document.body.scrollHeight - 8;
        if (chunk.text) pre.appendChild(document.createTextNode(chunk.text));
        pre.setAttribute("data-offset", String(chunk.next_offset));
        if (chunk.complete) pre.setAttribute("data-follow", "false");
        if (atEnd) window.scrollTo(0, document.body.scrollHeight);
        // A chunk that stopped short of the end is followed at once by the next.
        var more = chunk.next_offset < chunk.size;
        setTimeout(follow, more ? 0 : PERIOD);
      })
      .catch(function () { setTimeout(follow, PERIOD); });
  }

  setTimeout(refresh, PERIOD);
  follow();
})();
