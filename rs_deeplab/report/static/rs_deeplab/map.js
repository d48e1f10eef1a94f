/* rs_deeplab pages: a Leaflet map in a raster's own CRS (shared by every page that shows a map).
 *
 * RS.sceneMap(element, grid, maxNativeZoom, maxZoom) returns a Leaflet map whose coordinates are the raster's
 * CRS coordinates (lat = y, lng = x): its top-left corner (grid.x0, grid.y0) is pixel (0, 0) and, at
 * maxNativeZoom, one raster pixel (grid.a by grid.e units) is one screen pixel, which is how the tile pyramids of
 * rs_deeplab/report/tiles.py are cut. Nothing is reprojected, so overlays keep their exact place.
 */
(function () {
  "use strict";
  const RS = (window.RS = window.RS || {});

  RS.sceneCRS = function (grid, maxNativeZoom) {
    return L.extend({}, L.CRS.Simple, {
      transformation: new L.Transformation(1 / grid.a, -grid.x0 / grid.a, 1 / grid.e, -grid.y0 / grid.e),
      scale: function (zoom) { return Math.pow(2, zoom - maxNativeZoom); },
      zoom: function (scale) { return Math.log(scale) / Math.LN2 + maxNativeZoom; },
      infinite: true,
    });
  };

  /* The raster's bounds as Leaflet bounds; inset by `inset` pixels (tile layers ask only for tiles inside). */
  RS.rasterBounds = function (grid, inset) {
    const b = grid.bounds, dx = (inset || 0) * Math.abs(grid.a), dy = (inset || 0) * Math.abs(grid.e);
    return L.latLngBounds([b[1] + dy, b[0] + dx], [b[3] - dy, b[2] - dx]);
  };

  /* Map coordinates of raster pixel (col, row). */
  RS.pixelToLatLng = function (grid, col, row) {
    return L.latLng(grid.y0 + row * grid.e, grid.x0 + col * grid.a);
  };

  RS.sceneMap = function (element, grid, maxNativeZoom, maxZoom) {
    const map = L.map(element, {
      crs: RS.sceneCRS(grid, maxNativeZoom),
      minZoom: -3,
      maxZoom: maxZoom,
      attributionControl: false,
      preferCanvas: true,
    });
    map.fitBounds(RS.rasterBounds(grid, 0));
    L.control.scale({ imperial: false, metric: grid.crs !== null && !grid.geographic }).addTo(map);
    return map;
  };

  /* A pyramid of tiles under `url` ({z}/{x}/{y}.png) anchored at the raster's top-left corner. */
  RS.pyramidLayer = function (url, grid, maxNativeZoom, maxZoom, options) {
    return L.tileLayer(url, L.extend({
      tileSize: 256,
      minNativeZoom: 0,
      maxNativeZoom: maxNativeZoom,
      maxZoom: maxZoom,
      minZoom: -3,
      noWrap: true,
      bounds: RS.rasterBounds(grid, 0.01),
    }, options || {}));
  };

  /* Text of a coordinate pair rounded to about a tenth of a pixel. */
  RS.formatXY = function (x, y, step) {
    const digits = Math.max(0, Math.min(10, Math.ceil(-Math.log10(Math.abs(step) / 10))));
    return x.toFixed(digits) + ", " + y.toFixed(digits);
  };
})();
