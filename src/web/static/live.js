// jr-web's live pages: every data-refresh milliseconds, fetch the page again and swap its
// <main> in place (no reload; nothing runs while the tab is hidden). A failed fetch marks
// the page stale until the next one works.
(function () {
  "use strict";
  var period = parseInt(document.body.getAttribute("data-refresh") || "0", 10);
  if (!period) return;
  var live = document.getElementById("live");
  var busy = false;
  var swaps = 0;
  function refresh() {
    if (document.hidden || busy) return;
    busy = true;
    fetch(window.location.href, { headers: { "X-Jrq-Refresh": "1" }, credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.querySelector("main");
        var old = document.querySelector("main");
        if (fresh && old) {
          swaps += 1;
          fresh.setAttribute("data-refreshed", String(swaps));
          old.replaceWith(fresh);
        }
        if (live) live.classList.remove("stale");
      })
      .catch(function () {
        if (live) live.classList.add("stale");
      })
      .finally(function () {
        busy = false;
      });
  }
  window.setInterval(refresh, period);
})();
