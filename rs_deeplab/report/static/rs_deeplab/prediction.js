/* rs_deeplab prediction page: scene composite, class layer (coloured here), outlines, legend toggles, cursor. */
(function () {
  "use strict";
  const page = window.RS_PAGE, grid = page.grid, levels = window.RS_POLYGONS || [];
  const folder = encodeURIComponent(page.folder);
  const map = RS.sceneMap("map", grid, page.maxNativeZoom, page.maxZoom);
  window.RS.map = map; // for tests and the console
  const visible = page.classes.map(function () { return true; });

  // The class tiles hold class ids as grey values; an SVG filter gives each id its colour and hides toggled ones.
  const svgNS = "http://www.w3.org/2000/svg";
  function table(values) { return values.map(function (v) { return (v / 255).toFixed(6); }).join(" "); }
  function channel(i) {
    const values = new Array(256).fill(0);
    page.classes.forEach(function (c) { values[c.id] = c.colour[i]; });
    return table(values);
  }
  function alphaTable() {
    const values = new Array(256).fill(0);
    page.classes.forEach(function (c) { values[c.id] = visible[c.id] ? 255 : 0; });
    return table(values);
  }
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("width", "0");
  svg.setAttribute("height", "0");
  svg.setAttribute("style", "position:absolute");
  svg.innerHTML =
    '<filter id="rs-classes" color-interpolation-filters="sRGB" x="0" y="0" width="1" height="1">' +
    '<feComponentTransfer in="SourceGraphic" result="colour">' +
    '<feFuncR type="discrete" tableValues="' + channel(0) + '"/>' +
    '<feFuncG type="discrete" tableValues="' + channel(1) + '"/>' +
    '<feFuncB type="discrete" tableValues="' + channel(2) + '"/></feComponentTransfer>' +
    '<feComponentTransfer in="SourceGraphic" result="shown">' +
    '<feFuncR id="rs-alpha" type="discrete" tableValues="' + alphaTable() + '"/></feComponentTransfer>' +
    '<feColorMatrix in="shown" type="matrix" values="0 0 0 0 0  0 0 0 0 0  0 0 0 0 0  1 0 0 0 0" result="mask"/>' +
    '<feComposite in="colour" in2="mask" operator="in"/></filter>';
  document.body.appendChild(svg);

  const base = folder + "/tiles/";
  const sceneLayer = page.scene
    ? RS.pyramidLayer(base + "scene/{z}/{x}/{y}." + page.scene, grid, page.maxNativeZoom, page.maxZoom, { className: "rs-scene" })
    : null;
  const classLayer = RS.pyramidLayer(base + "classes/{z}/{x}/{y}.png", grid, page.maxNativeZoom, page.maxZoom,
    { className: "rs-classes", opacity: 0.7 });
  if (sceneLayer) sceneLayer.addTo(map);
  classLayer.addTo(map);

  const opacity = document.getElementById("opacity");
  opacity.addEventListener("input", function () { classLayer.setOpacity(opacity.value / 100); });
  const sceneBox = document.getElementById("scene");
  if (!sceneLayer) { sceneBox.checked = false; sceneBox.disabled = true; }
  sceneBox.addEventListener("change", function () {
    if (sceneLayer) { if (sceneBox.checked) sceneLayer.addTo(map); else map.removeLayer(sceneLayer); }
  });

  // Outlines: the level of detail for the zoom, only the visible classes.
  const renderer = L.canvas({ padding: 0.5 });
  const outlines = L.layerGroup().addTo(map);
  const outlineBox = document.getElementById("outlines");
  function ringLatLngs(ring) {
    const out = [];
    for (let i = 0; i < ring.length; i += 2) out.push(RS.pixelToLatLng(grid, ring[i], ring[i + 1]));
    return out;
  }
  function drawOutlines() {
    outlines.clearLayers();
    if (!outlineBox.checked || !levels.length) return;
    const zoom = map.getZoom();
    const level = levels.find(function (l) { return zoom >= l.minZoom; }) || levels[levels.length - 1];
    level.polygons.forEach(function (p) {
      if (!visible[p[0]]) return;
      const c = page.classes[p[0]].colour;
      const dark = "rgb(" + c.map(function (v) { return Math.round(v * 0.45); }).join(",") + ")";
      L.polygon(p[1].map(ringLatLngs), { renderer: renderer, color: dark, weight: 1, fill: false, interactive: false })
        .addTo(outlines);
    });
  }
  map.on("zoomend", drawOutlines);
  outlineBox.addEventListener("change", drawOutlines);

  document.querySelectorAll("input.toggle").forEach(function (box) {
    box.addEventListener("change", function () {
      visible[Number(box.dataset.class)] = box.checked;
      document.getElementById("rs-alpha").setAttribute("tableValues", alphaTable());
      drawOutlines();
    });
  });

  // Cursor: scene CRS coordinates, lon/lat through proj4.
  const crsText = document.getElementById("cursor-crs"), lonlatText = document.getElementById("cursor-lonlat");
  let toLonLat = null;
  if (grid.proj4) {
    try { toLonLat = proj4(grid.proj4, "WGS84"); } catch (err) { lonlatText.textContent = "lon/lat unavailable"; }
  }
  map.on("mousemove", function (e) {
    const x = e.latlng.lng, y = e.latlng.lat;
    crsText.textContent = grid.crs ? RS.formatXY(x, y, grid.a) : "column, row " + RS.formatXY(x, y, 1);
    if (toLonLat) {
      const ll = toLonLat.forward([x, y]);
      lonlatText.textContent = "lon " + ll[0].toFixed(6) + ", lat " + ll[1].toFixed(6);
    }
  });
  drawOutlines();
  window.RS.ready = true;
})();
