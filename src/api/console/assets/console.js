// skipjack console: live regions. An element with data-refresh="URL"
// reloads its HTML from URL every data-interval milliseconds, while the
// page is visible and the keyboard focus is not inside it (so a refresh
// never takes the focus away); it stops once it holds an element matching
// data-stop-when.
"use strict";
document.querySelectorAll("[data-refresh]").forEach(function (el) {
  var every = Number(el.dataset.interval) || 3000;
  var stopWhen = el.dataset.stopWhen;
  if (stopWhen && el.querySelector(stopWhen)) return;
  var timer = setInterval(function () {
    if (document.hidden || el.contains(document.activeElement)) return;
    fetch(el.dataset.refresh, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return;
        el.innerHTML = html;
        if (stopWhen && el.querySelector(stopWhen)) clearInterval(timer);
      })
      .catch(function () {});
  }, every);
});
