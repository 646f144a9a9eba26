"""Take the README's screenshot of `reattn-batch view` in headless Chromium.

    python docs/viewer_screenshot.py STORE OUT.png [--width 1280] [--height 760]

Starts the real server on a free port, loads the page in Debian's chromium (chromium-driver,
Selenium), waits for every tile, clicks the map's centre (the pixel read-out), saves the
screenshot as a 256-colour PNG (small enough for the README; octree quantisation keeps
the class colours exact) and stops the server (Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from io import BytesIO
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=760)
    args = parser.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    server = subprocess.Popen(
        [sys.executable, "-m", "reattn_batch", "view", str(args.store), "--port", "0"],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    url = None
    for line in server.stdout:
        match = re.search(r"(http://\S+/)", line)
        if match:
            url = match.group(1)
            break
    if url is None:
        sys.exit("the viewer did not start")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--force-device-scale-factor=1", f"--user-data-dir={tempfile.mkdtemp()}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        driver.set_window_size(args.width, args.height)
        inner = driver.execute_script("return [innerWidth, innerHeight]")
        driver.set_window_size(
            2 * args.width - inner[0], 2 * args.height - inner[1]
        )  # the page itself is width x height
        driver.get(url)

        def idle() -> None:
            ready = "return !!(window.viewer && viewer.ready && viewer.idle())"
            for _ in range(600):
                if driver.execute_script(ready):
                    time.sleep(0.5)
                    return
                time.sleep(0.1)

        idle()
        ActionChains(driver).move_to_element(driver.find_element(By.ID, "map")).click().perform()
        time.sleep(1.0)
        idle()
        image = Image.open(BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    finally:
        driver.quit()
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    # 256 colours by octree: keeps the legend's swatch colours exact (median cut does not)
    image.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
        args.out, optimize=True
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB, {image.size})")


if __name__ == "__main__":
    main()
