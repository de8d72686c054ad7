// Drover's dashboard: every element with data-refresh="URL" is replaced
// by a fresh copy of that URL's HTML every two seconds while the page is
// visible. Nothing else runs; without this script the pages still work.
(function () {
  "use strict";
  var every = 2000;
  function refresh() {
    if (document.hidden) return;
    document.querySelectorAll("[data-refresh]").forEach(function (el) {
      fetch(el.getAttribute("data-refresh"), { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) { if (html !== null && html !== el.innerHTML) el.innerHTML = html; })
        .catch(function () {});
    });
  }
  setInterval(refresh, every);
})();
