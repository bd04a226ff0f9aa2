"""The live view's page (``GET /``): the stream in an ``<img>`` and the latest result from
``/latest.json``, updated twice a second. Self-contained: no external scripts or styles."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>scenecam-edge live view</title>
<style>
body { margin: 0; font: 15px system-ui, sans-serif; background: #111; color: #eee; }
main { display: flex; flex-wrap: wrap; gap: 16px; padding: 12px; }
section { flex: 1; min-width: 260px; }
img { max-width: 100%; background: #000; }
#label { font-size: 26px; font-weight: 600; }
.row { display: flex; align-items: center; gap: 6px; margin: 3px 0; }
.name { width: 90px; } .bar { height: 12px; background: #e8a33d; }
#meta { color: #aaa; margin: 6px 0 12px; }
</style></head>
<body><main>
<img id="stream" src="/stream.mjpg" alt="the camera's annotated frames">
<section><div id="label">waiting for a frame</div><div id="meta"></div><div id="probs"></div>
</section></main>
<script>
async function update() {
  try {
    const r = await fetch("/latest.json", {cache: "no-store"});
    const d = await r.json();
    if (d.frame !== null) {
      document.getElementById("label").textContent =
        d.label + " " + (100 * d.confidence).toFixed(1) + "%";
      document.getElementById("meta").textContent =
        "frame " + d.frame + " | " + d.fps.toFixed(1) + " fps | " + (d.method || "heatmap off");
      const probs = document.getElementById("probs");
      probs.replaceChildren();
      for (const [name, p] of Object.entries(d.probabilities).sort((a, b) => b[1] - a[1])) {
        const row = document.createElement("div"); row.className = "row";
        const n = document.createElement("span"); n.className = "name"; n.textContent = name;
        const b = document.createElement("span"); b.className = "bar";
        b.style.width = Math.round(150 * p) + "px";
        const v = document.createElement("span"); v.textContent = (100 * p).toFixed(1) + "%";
        row.append(n, b, v); probs.append(row);
      }
    }
  } catch (e) { document.getElementById("meta").textContent = "no connection"; }
}
update(); setInterval(update, 500);
</script></body></html>
"""
