// Bulwark dashboards: poll the overview's JSON endpoint and draw sparklines as inline SVG.
// Hand-written, no dependencies, nothing fetched from outside this site.
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";

  function draw(svg, values) {
    var width = svg.viewBox.baseVal.width || 180, height = svg.viewBox.baseVal.height || 36;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var points = [], known = values.filter(function (v) { return typeof v === "number"; });
    if (!known.length) return;
    var max = Math.max.apply(null, known), min = Math.min(0, Math.min.apply(null, known));
    var span = max - min || 1, step = values.length > 1 ? (width - 4) / (values.length - 1) : 0;
    values.forEach(function (v, i) {
      if (typeof v !== "number") return;
      points.push((2 + i * step).toFixed(1) + "," + (height - 2 - (v - min) / span * (height - 4)).toFixed(1));
    });
    var line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" "));
    svg.appendChild(line);
    svg.setAttribute("data-points", String(points.length));
  }

  function drawHistory(root, samples) {
    root.querySelectorAll("svg[data-series]").forEach(function (svg) {
      var key = svg.getAttribute("data-series");
      var values = samples.map(function (s) { return s[key]; });
      draw(svg, values);
      var last = root.querySelector('[data-last="' + key + '"]');
      var latest = values.length ? values[values.length - 1] : null;
      if (last) last.textContent = typeof latest === "number" ? String(latest) : "–";
    });
  }

  function localTimes(root) {
    root.querySelectorAll("[data-epoch]").forEach(function (el) {
      var t = parseFloat(el.getAttribute("data-epoch"));
      if (!isNaN(t)) el.textContent = new Date(t * 1000).toLocaleString();
    });
  }

  function startOverview(root) {
    var url = root.getAttribute("data-url"), every = parseInt(root.getAttribute("data-poll-ms"), 10) || 2000;
    var updated = document.getElementById("bw-updated"), problem = document.getElementById("bw-poll-error");
    var history = document.getElementById("bw-history");
    drawHistory(root, history ? JSON.parse(history.textContent) : []);
    localTimes(root);
    function poll() {
      fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (response) {
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.json();
        })
        .then(function (data) {
          root.innerHTML = data.html;
          drawHistory(root, data.history);
          localTimes(root);
          updated.textContent = new Date(data.generated_at * 1000).toLocaleTimeString();
          updated.setAttribute("data-generated-at", String(data.generated_at));
          problem.textContent = "";
        })
        .catch(function (error) { problem.textContent = "refresh failed: " + error.message; })
        .then(function () { window.setTimeout(poll, every); });
    }
    window.setTimeout(poll, every);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var overview = document.getElementById("bw-overview");
    if (overview) startOverview(overview);
    document.querySelectorAll("svg.bw-inline-spark[data-values]").forEach(function (svg) {
      try { draw(svg, JSON.parse(svg.getAttribute("data-values"))); } catch (e) { /* no data */ }
    });
  });
})();
