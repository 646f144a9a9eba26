/* reattn-batch view: the page. Everything comes from this server (api/, tiles/), asked for
   relative to the page's own URL (which carries the token when the server needs one). */
"use strict";

(function () {
  const state = { info: null, map: null, imagery: null, labels: null, visible: new Set() };

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function labelsUrl() {
    const all = state.info.classes.length === state.visible.size;
    const classes = Array.from(state.visible).sort((a, b) => a - b).join(",");
    return "tiles/labels/{z}/{x}/{y}.png" + (all ? "" : "?classes=" + classes);
  }

  function showRun(info) {
    document.getElementById("title").textContent = info.name;
    document.title = info.name + " - reattn-batch view";
    document.getElementById("random-warning").hidden = !info.random_weights;
    if (!info.complete) {
      const w = document.getElementById("incomplete-warning");
      const p = info.progress;
      w.textContent = "Incomplete run" +
        (p ? " (" + p.blocks_done + "/" + p.blocks_total + " blocks)" : "") +
        ": unwritten areas are empty (restart the viewer to see blocks written since).";
      w.hidden = false;
    }
    const run = document.getElementById("run");
    const rows = [
      ["method", info.method || "-"],
      ["upsampler", info.upsampler || "-"],
      ["CLIP weights", (info.clip_weights || "-") + (info.random_weights ? " (RANDOM)" : "")],
      ["classes", info.classes.map((c) => c.name).join(", ")],
      ["size", info.shape.width + " x " + info.shape.height + " px"],
      ["CRS", info.crs || "-"],
      ["scene", info.scene || "-"],
    ];
    for (const [k, v] of rows) {
      run.appendChild(el("dt", {}, k));
      run.appendChild(el("dd", { "data-key": k }, v));
    }
    if (!info.area_available) {
      const note = document.getElementById("area-note");
      note.textContent = "Areas unavailable: " + info.area_note;
      note.hidden = false;
    }
    if (info.scene_note) {
      const note = document.getElementById("scene-note");
      note.textContent = info.scene_note;
      note.hidden = false;
    }
  }

  function showLegend(info) {
    const body = document.querySelector("#legend tbody");
    for (const c of info.classes) {
      state.visible.add(c.index);
      const tr = el("tr", {
        "class": "legend-row",
        "data-index": String(c.index),
        "data-name": c.name,
        "data-hectares": c.hectares === null ? "" : String(c.hectares),
        "data-percent": c.percent === null ? "" : String(c.percent),
        "data-pixels": String(c.pixels),
      });
      const box = el("input", { type: "checkbox", "class": "toggle", "aria-label": "show " + c.name });
      box.checked = true;
      box.addEventListener("change", () => {
        if (box.checked) state.visible.add(c.index); else state.visible.delete(c.index);
        state.labels.setUrl(labelsUrl());
      });
      const label = el("label");
      const swatch = el("span", { "class": "swatch" });
      swatch.style.background = "rgb(" + c.colour.join(",") + ")";
      label.append(box, swatch, el("span", { "class": "name" }, c.name));
      const td = el("td", { colspan: "2" });
      td.appendChild(label);
      tr.appendChild(td);
      tr.appendChild(el("td", { "class": "num hectares" }, c.hectares_text));
      tr.appendChild(el("td", { "class": "num percent" }, c.percent_text));
      body.appendChild(tr);
    }
    const total = el("tr", { "class": "legend-total" });
    total.appendChild(el("td", { colspan: "2" }, "valid pixels"));
    total.appendChild(el("td", { "class": "num" }, info.valid_hectares_text));
    total.appendChild(el("td", { "class": "num" }, ""));
    body.appendChild(total);
  }

  function showMap(info) {
    const [west, south, east, north] = info.bounds;
    const bounds = L.latLngBounds([south, west], [north, east]);
    const map = L.map("map", {
      fadeAnimation: false, maxZoom: info.max_zoom, minZoom: info.min_zoom,
    });
    const common = {
      bounds: bounds, minZoom: info.min_zoom, maxZoom: info.max_zoom, tileSize: 256, keepBuffer: 1,
    };
    if (info.imagery) {
      state.imagery = L.tileLayer("tiles/scene/{z}/{x}/{y}.png", common).addTo(map);
    }
    const opacity = document.getElementById("opacity");
    state.labels = L.tileLayer(labelsUrl(), Object.assign({}, common, {
      opacity: opacity.value / 100, className: "labels-layer",
    })).addTo(map);
    opacity.addEventListener("input", () => {
      state.labels.setOpacity(opacity.value / 100);
      document.getElementById("opacity-value").textContent = opacity.value + "%";
    });
    L.control.scale({ imperial: false }).addTo(map);
    map.fitBounds(bounds);
    map.on("click", (e) => showPixel(map, e.latlng));
    state.map = map;
  }

  let marker = null;
  async function showPixel(map, latlng) {
    const box = document.getElementById("pixel");
    const r = await fetch("api/pixel?lon=" + latlng.lng + "&lat=" + latlng.lat);
    const p = await r.json();
    let text;
    if (!p.inside) {
      text = "outside the store";
    } else if (p.nodata) {
      text = "nodata / not written (row " + p.row + ", col " + p.col + ")";
    } else {
      text = (p["class"] === null ? "label " + p.label : p["class"]) +
        (p.confidence === undefined ? "" :
          p.confidence === null ? ", confidence -" :
            ", confidence " + p.confidence.toFixed(3)) +
        " (row " + p.row + ", col " + p.col + ")";
    }
    box.textContent = text;
    box.dataset.label = p.inside ? String(p.label) : "";
    if (marker) marker.remove();
    // A DOM node, not a string: Leaflet would parse a string as HTML, and class names
    // come from the store.
    marker = L.circleMarker(latlng, { radius: 5, color: "#000", weight: 2, fillOpacity: 0 })
      .addTo(map).bindPopup(el("span", { "class": "pixel-popup" }, text)).openPopup();
  }

  /** True once no tile of any layer is loading (used by tests and screenshots). */
  function idle() {
    return !!state.map && !(state.labels && state.labels.isLoading()) &&
      !(state.imagery && state.imagery.isLoading());
  }

  window.viewer = { state: state, idle: idle, ready: false };

  fetch("api/info")
    .then((r) => r.json())
    .then((info) => {
      state.info = info;
      showRun(info);
      showLegend(info);
      showMap(info);
      window.viewer.ready = true;
    });
})();
