"""Render every page of a built book in headless Chromium at a desktop and a phone width and report
what a reader would see wrong: the page scrolling sideways (something wider than the screen
outside a scrolling box), a table or figure cut off without a way to scroll to the rest, maths
left untypeset, more than one header bar; and save a screenshot of each page's top for a look.

    python tools/check_layout.py [_build/html] [--widths 1280,400] [--shots /tmp/book-shots]

Needs a Chromium (`apt-get install chromium`). The widths are emulated through the DevTools
protocol (a headless window is at least 500 px wide), as a phone's browser lays the page out;
a small script measures the layout once MathJax has typeset the page.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tornado.websocket import websocket_connect

PROBE = r"""
(() => { function maeLayoutProbe() {
  const W = document.documentElement.clientWidth, out = {width: W, problems: []};
  const scrolls = el => { for (let p = el.parentElement; p; p = p.parentElement) {
      const s = getComputedStyle(p).overflowX; if (s === "auto" || s === "scroll") return true; }
    return false; };
  // the page, or the article inside it (the theme lets the article scroll on its own)
  const boxes = [document.documentElement, ...document.querySelectorAll(
    "main, article, .bd-main, .bd-content, .bd-article-container, .bd-article")];
  const over = boxes.find(b => b.scrollWidth > b.clientWidth + 1);
  if (over) {
    // the innermost element sticking out, to name the culprit
    const wide = [...document.querySelectorAll("main *")].filter(e =>
      e.getBoundingClientRect().right > W + 1 && ![...e.children].some(c =>
        c.getBoundingClientRect().right > W + 1));
    const name = wide.length ? wide[0].tagName.toLowerCase() + (wide[0].className ? "." +
      String(wide[0].className).split(" ")[0] : "") + " '" + wide[0].textContent.trim().slice(0, 40) + "'" : "?";
    out.problems.push("the page scrolls sideways (" + over.scrollWidth + " px > " +
                      over.clientWidth + " px; e.g. " + name + ")");
  }
  document.querySelectorAll("table, img, svg.figure, pre").forEach(el => {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > W + 1 && !scrolls(el) && getComputedStyle(el).overflowX !== "auto")
      out.problems.push(el.tagName.toLowerCase() + " cut off at the right (" + Math.round(r.right) + " px)");
  });
  if (/\$[^$\n]+\$|\\\(|\\\[/.test(document.querySelector("main") ? document.querySelector("main").innerText : ""))
    out.problems.push("maths left untypeset");
  const bars = [...document.querySelectorAll("header, .bd-header, .bd-header-article")]
    .filter(e => e.getBoundingClientRect().height > 0 && e.getBoundingClientRect().top < 5);
  out.bars = bars.length;
  out.math = document.querySelectorAll("mjx-container").length;
  return out;
}
return new Promise(done => setTimeout(() => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise)
    MathJax.startup.promise.then(() => done(maeLayoutProbe())); else done(maeLayoutProbe()); }, 500));
})()
"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    sys.exit("error: no Chromium found; install it (apt-get install chromium) and run again")


class Tab:
    """One Chromium page driven through the DevTools protocol."""

    def __init__(self, ws) -> None:
        self.ws, self.next_id, self.events = ws, 0, []

    async def call(self, method: str, **params):
        self.next_id += 1
        await self.ws.write_message(json.dumps({"id": self.next_id, "method": method,
                                                "params": params}))
        while True:
            msg = json.loads(await self.ws.read_message())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg.get("method"))

    async def wait_for(self, event: str, timeout: float = 60) -> None:
        async def loop():
            while event not in self.events:
                self.events.append(json.loads(await self.ws.read_message()).get("method"))
        await asyncio.wait_for(loop(), timeout)
        self.events.clear()


async def check(html: Path, pages: list[Path], widths: list[int], shots: Path | None) -> int:
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                                 "--hide-scrollbars", "--remote-debugging-port=0",
                                 f"--user-data-dir={profile}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            for line in proc.stderr:
                if found := re.search(r"DevTools listening on (ws://\S+)", line):
                    break
            else:
                sys.exit("error: Chromium did not start its DevTools endpoint")
            browser = Tab(await websocket_connect(found.group(1), max_message_size=1 << 28))
            target = (await browser.call("Target.createTarget", url="about:blank"))["targetId"]
            port = re.search(r":(\d+)/", found.group(1)).group(1)
            tab = Tab(await websocket_connect(f"ws://127.0.0.1:{port}/devtools/page/{target}",
                                              max_message_size=1 << 28))
            await tab.call("Page.enable")
            failures = 0
            for width in widths:
                await tab.call("Emulation.setDeviceMetricsOverride", width=width, height=1600,
                               deviceScaleFactor=1, mobile=width < 600)
                for page in pages:
                    rel = page.relative_to(html)
                    tab.events.clear()
                    await tab.call("Page.navigate", url=page.resolve().as_uri())
                    await tab.wait_for("Page.loadEventFired")
                    got = await tab.call("Runtime.evaluate", expression=PROBE, awaitPromise=True,
                                         returnByValue=True)
                    info = got["result"]["value"]
                    problems = info["problems"] + (
                        [f"{info['bars']} header bars"] if info["bars"] > 1 else [])
                    if info["width"] != width:
                        problems.append(f"laid out at {info['width']} px, not {width}")
                    failures += bool(problems)
                    print(f"{rel} @ {width}px: {'; '.join(problems) or 'ok'} "
                          f"({info['math']} formulas)", flush=True)
                    if shots:
                        shots.mkdir(parents=True, exist_ok=True)
                        png = (await tab.call("Page.captureScreenshot", format="png"))["data"]
                        name = f"{str(rel).replace('/', '_')[:-5]}-{width}.png"
                        (shots / name).write_bytes(base64.b64decode(png))
            return failures
        finally:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("html", nargs="?", type=Path, default=Path("_build/html"))
    p.add_argument("--widths", default="1280,400", help="window widths in px (default 1280,400)")
    p.add_argument("--shots", type=Path, default=None, help="folder for screenshots (default: none)")
    args = p.parse_args(argv)
    if not (args.html / "index.html").exists():
        sys.exit(f"error: {args.html} holds no built book; run `make book` first")
    widths = [int(w) for w in args.widths.split(",")]
    pages = sorted(q for q in args.html.rglob("*.html")  # not the redirect to the first page
                   if "_static" not in q.parts and q.name not in ("genindex.html", "search.html")
                   and 'http-equiv="Refresh"' not in q.read_text())
    failures = asyncio.run(check(args.html, pages, widths, args.shots))
    print(f"{len(pages)} pages at {', '.join(map(str, widths))} px: {failures} with problems")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
