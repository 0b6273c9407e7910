// The console's only script: copy buttons and the usage charts (uPlot, vendored).
"use strict";
(function () {
  function copied(button) {
    var label = button.textContent;
    button.textContent = "Copied";
    setTimeout(function () { button.textContent = label; }, 1200);
  }
  function copy(text, button) {
    if (navigator.clipboard) {  // only in a secure context (HTTPS, localhost)
      navigator.clipboard.writeText(text).then(function () { copied(button); });
      return;
    }
    var area = document.createElement("textarea");
    area.value = text;
    document.body.appendChild(area);
    area.select();
    document.execCommand("copy");
    document.body.removeChild(area);
    copied(button);
  }
  document.querySelectorAll("button.copy").forEach(function (button) {
    button.addEventListener("click", function () {
      var id = button.getAttribute("data-copy");
      var text = id ? document.getElementById(id).textContent : button.getAttribute("data-copy-text");
      copy(text, button);
    });
  });

  var data = document.getElementById("chart-data");
  if (!data || typeof uPlot === "undefined") { return; }
  var charts = JSON.parse(data.textContent);
  var palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#7f7f7f", "#bcbd22", "#17becf"];
  document.querySelectorAll("[data-chart]").forEach(function (el) {
    var named = charts[el.getAttribute("data-chart")] || {};
    var names = Object.keys(named);
    var series = [{}];
    var columns = [charts.x];
    names.forEach(function (name, i) {
      series.push({ label: name, stroke: palette[i % palette.length], width: 1.5,
                    spanGaps: false, points: { show: charts.x.length < 80 } });
      columns.push(named[name]);
    });
    var width = Math.max(280, el.clientWidth || 560);
    var unit = el.getAttribute("data-unit");
    // Axis and grid colours from the page's theme, so the charts stay readable in dark mode.
    var style = getComputedStyle(document.documentElement);
    var fg = style.getPropertyValue("--fg").trim() || "#1d2330";
    var line = style.getPropertyValue("--line").trim() || "#d9dee7";
    var axis = { stroke: fg, grid: { stroke: line }, ticks: { stroke: line } };
    new uPlot({
      width: width, height: 220, series: series,
      axes: [axis, Object.assign({ label: unit, size: 60 }, axis)],
      scales: { x: { time: true } },
    }, columns, el);
  });
})();
