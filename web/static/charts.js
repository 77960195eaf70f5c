// Line charts on uPlot: time or numeric x axis, theme colours, values on hover (legend).
"use strict";
(function () {
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  const charts = [];

  function build(c) {
    const axis = { stroke: css("--muted"), grid: { stroke: css("--chart-grid") }, ticks: { stroke: css("--chart-grid") } };
    const opts = {
      width: Math.max(280, c.el.clientWidth), height: c.height || 200,
      scales: { x: { time: c.time !== false } },
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      axes: [Object.assign({}, axis, c.xLabel ? { label: c.xLabel } : {}),
             Object.assign({}, axis, { size: 56 }, c.yLabel ? { label: c.yLabel } : {})],
      series: [{ label: c.xName || "Time", value: c.time === false ? (u, v) => v : "{YYYY}-{MM}-{DD} {HH}:{mm}" }].concat(
        c.series.map((s, i) => ({
          label: s.label, stroke: css("--chart-" + ((i % 3) + 1)), width: 2, spanGaps: false,
          points: { show: c.points || false, size: 6 },
          value: (u, v) => (v === null || v === undefined ? "—" : FA.fmt(v, s.digits === undefined ? 1 : s.digits) + (s.unit || "")),
        }))),
    };
    c.el.replaceChildren();
    c.plot = new uPlot(opts, c.data, c.el);
  }

  FA.chart = function (el, config) {
    const c = Object.assign({ el }, config);
    c.data = config.data || [[]].concat(config.series.map(() => []));
    build(c);
    charts.push(c);
    return {
      update(data) { c.data = data; c.plot.setData(data); },
    };
  };
  document.addEventListener("fa:theme", () => charts.forEach(build));
  let timer = null;
  window.addEventListener("resize", () => {
    clearTimeout(timer);
    timer = setTimeout(() => charts.forEach((c) => c.plot.setSize({ width: Math.max(280, c.el.clientWidth), height: c.height || 200 })), 150);
  });
})();
