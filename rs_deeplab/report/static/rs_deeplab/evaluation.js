/* rs_deeplab evaluation page: where the prediction is right and wrong, per scene, coloured in the browser.
 *
 * Each error tile holds the truth's class id in red and the prediction's in green (alpha 0 where not scored). An
 * SVG filter turns them into colours: for all classes, right (green) or wrong (red); for class c, true positives
 * (green), false positives (red: predicted c, truth another) and false negatives (blue: truth c, predicted another).
 */
(function () {
  "use strict";
  const RS = (window.RS = window.RS || {});
  const data = window.RS_EVAL, folder = encodeURIComponent(data.folder);
  const COLOURS = { right: [0, 170, 0], wrong: [230, 0, 0], tp: [0, 170, 0], fp: [230, 0, 0], fn: [0, 90, 255] };
  RS.colours = COLOURS;
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("width", "0");
  svg.setAttribute("height", "0");
  svg.setAttribute("style", "position:absolute");
  document.body.appendChild(svg);

  function f(v) { return (v / 255).toFixed(6); }
  function onlyClass(c) {
    const values = new Array(256).fill(0);
    values[c] = 1;
    return values.join(" ");
  }
  function filterFor(c) {
    const head = '<filter id="rs-errors" color-interpolation-filters="sRGB" x="0" y="0" width="1" height="1">';
    const tail = '<feComposite in2="SourceGraphic" operator="in"/></filter>';
    if (c < 0) {
      const r = COLOURS.right, w = COLOURS.wrong;
      // a = clamp(255 (t - p)), b = clamp(255 (p - t)): wrong = a + b (one of them is 1 where t != p)
      return head +
        '<feColorMatrix in="SourceGraphic" type="matrix" values="255 -255 0 0 0  -255 255 0 0 0  0 0 0 0 0  0 0 0 0 1"/>' +
        '<feColorMatrix type="matrix" values="' +
        [f(w[0] - r[0]), f(w[0] - r[0]), 0, 0, f(r[0]),
         f(w[1] - r[1]), f(w[1] - r[1]), 0, 0, f(r[1]),
         f(w[2] - r[2]), f(w[2] - r[2]), 0, 0, f(r[2]), 0, 0, 0, 0, 1].join(" ") + '"/>' + tail;
    }
    const tp = COLOURS.tp, fp = COLOURS.fp, fn = COLOURS.fn;
    // R = [truth is c], G = [prediction is c]; then FP = G - R, TP = R + G - 1, FN = R - G (clamped), shown = R + G
    return head +
      '<feComponentTransfer in="SourceGraphic"><feFuncR type="discrete" tableValues="' + onlyClass(c) + '"/>' +
      '<feFuncG type="discrete" tableValues="' + onlyClass(c) + '"/><feFuncB type="linear" slope="0" intercept="0"/>' +
      '<feFuncA type="linear" slope="0" intercept="1"/></feComponentTransfer>' +
      '<feColorMatrix type="matrix" values="-1 1 0 0 0  1 1 0 0 -1  1 -1 0 0 0  1 1 0 0 0"/>' +
      '<feColorMatrix type="matrix" values="' +
      [f(fp[0]), f(tp[0]), f(fn[0]), 0, 0, f(fp[1]), f(tp[1]), f(fn[1]), 0, 0, f(fp[2]), f(tp[2]), f(fn[2]), 0, 0,
       0, 0, 0, 1, 0].join(" ") + '"/>' + tail;
  }
  function swatch(rgb, text) {
    return '<span class="key"><span class="swatch" style="background:rgb(' + rgb.join(",") + ')"></span>' + text +
      "</span> ";
  }
  const legend = document.getElementById("error-legend");
  function setClass(c) {
    svg.innerHTML = filterFor(c);
    RS.errorClass = c;
    legend.innerHTML = c < 0 ? swatch(COLOURS.right, "right") + swatch(COLOURS.wrong, "wrong")
      : swatch(COLOURS.tp, "true positive") + swatch(COLOURS.fp, "false positive") +
        swatch(COLOURS.fn, "false negative");
  }

  const opacity = document.getElementById("opacity");
  let layer = null;
  function showScene(i) {
    const scene = data.scenes[i];
    if (RS.map) RS.map.remove();
    const map = RS.sceneMap("map", scene.grid, scene.maxNativeZoom, scene.maxZoom);
    layer = RS.pyramidLayer(folder + "/" + scene.tiles + "/{z}/{x}/{y}.png", scene.grid, scene.maxNativeZoom,
      scene.maxZoom, { className: "rs-errors", opacity: opacity.value / 100 }).addTo(map);
    RS.map = map;
    RS.scene = scene;
  }
  const classSelect = document.getElementById("error-class");
  classSelect.addEventListener("change", function () { setClass(+classSelect.value); });
  const sceneSelect = document.getElementById("scene");
  sceneSelect.addEventListener("change", function () { showScene(+sceneSelect.value); });
  opacity.addEventListener("input", function () { if (layer) layer.setOpacity(opacity.value / 100); });
  RS.setClass = setClass;
  RS.showScene = showScene;
  setClass(-1);
  showScene(0);
  RS.ready = true;
})();
