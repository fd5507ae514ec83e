"""The chat page in a real headless browser (Debian's chromium, driven over the DevTools protocol on a
pipe, standard library only): the server started from its command line, a caregiver line typed into
the page and sent with Enter, and the toddler's streamed reply appears, equal to a direct `generate`."""
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minitoddler.chat import load
from minitoddler.chatml import caregiver_chat, render_chat
from minitoddler.generate import generate
from tiny_chat_model import make_model_dir

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def above_4(fd: int) -> int:
    new = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return new


class Browser:
    """Headless chromium with --remote-debugging-pipe: commands on its fd 3, answers on its fd 4, each a
    JSON message ended by a NUL byte."""

    def __init__(self, profile: Path):
        to_browser, self.write_fd = os.pipe()
        self.read_fd, from_browser = os.pipe()
        # the child's ends move above 4 first, so that making them its fds 3 and 4 overwrites neither
        to_browser, from_browser = (above_4(fd) for fd in (to_browser, from_browser))
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-extensions", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                 "--window-size=800,600", "about:blank"]
        self.proc = subprocess.Popen(["/bin/bash", "-c", f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser}',
                                      CHROMIUM, *flags], pass_fds=(to_browser, from_browser),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in (to_browser, from_browser):
            os.close(fd)
        self.buffer, self.next_id = b"", 0

    def send(self, method: str, session: str | None = None, timeout: float = 30, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self.next_id:  # events (no id) are skipped
                    if "error" in answer:
                        raise RuntimeError(f"{method}: {answer['error']}")
                    return answer["result"]
            if not select.select([self.read_fd], [], [], max(0.0, deadline - time.time()))[0]:
                raise TimeoutError(f"chromium did not answer {method} in {timeout} s")
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self.buffer += chunk

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.write_fd)
        os.close(self.read_fd)


@pytest.fixture(scope="module")
def model_dir(shared_data, tmp_path_factory):
    return make_model_dir(shared_data, tmp_path_factory.mktemp("browser"))


@pytest.fixture()
def server_url(model_dir):
    proc = subprocess.Popen([sys.executable, "-m", "minitoddler.serve", "--model", str(model_dir), "--port", "0"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = proc.stdout.readline()  # "serving NAME on http://127.0.0.1:PORT/ ..."
    try:
        assert line.startswith("serving "), f"the server did not start: {line!r}"
        yield line.split(" on ")[1].split()[0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_page_shows_the_toddler_reply(server_url, model_dir, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.fail("this test needs Debian's chromium: apt-get install -y chromium (bash tests/run.sh installs it)")
    model, tok = load(str(model_dir), "cpu")
    ids = render_chat(tok, caregiver_chat("where is the ball?"), add_generation_prompt=True).ids
    out = generate(model, [ids], 10, stop_ids=[0, 2])[0]
    want = tok.decode([t for t in out if t not in (0, 2)], skip_special_tokens=True).strip()

    browser = Browser(tmp_path / "profile")
    try:
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        js = lambda expr: browser.send("Runtime.evaluate", session, expression=expr,
                                       returnByValue=True)["result"].get("value")
        browser.send("Page.navigate", session, url=server_url)
        deadline = time.time() + 30
        while js("document.readyState === 'complete' && !!document.getElementById('line')") is not True:
            assert time.time() < deadline, "the page did not load"
            time.sleep(0.1)
        assert js("document.title") == "Talk to the toddler"
        js("document.getElementById('temperature').value = '0'; document.getElementById('max_tokens').value = '10';"
           "document.getElementById('line').focus()")
        browser.send("Input.insertText", session, text="where is the ball?")  # typed as a person would
        for kind in ("keyDown", "keyUp"):
            browser.send("Input.dispatchKeyEvent", session, type=kind, key="Enter", code="Enter",
                         windowsVirtualKeyCode=13, **({"text": "\r"} if kind == "keyDown" else {}))
        read = ("JSON.stringify([[...document.querySelectorAll('.msg')].map(m => [m.className, "
                "m.querySelector('.text').textContent]), document.getElementById('send').disabled])")
        deadline = time.time() + 60
        while True:
            bubbles, busy = json.loads(js(read))
            if len(bubbles) == 2 and not busy:
                break
            assert time.time() < deadline, f"no reply appeared: {bubbles}"
            time.sleep(0.2)
        assert bubbles == [["msg caregiver", "where is the ball?"], ["msg toddler", want]]
        assert js("document.getElementById('line').value") == ""  # the box is cleared for the next line
        shot = base64.b64decode(browser.send("Page.captureScreenshot", session, format="png")["data"])
        assert shot.startswith(b"\x89PNG")
        (tmp_path / "chat.png").write_bytes(shot)
        if os.environ.get("MINITODDLER_SCREENSHOT"):  # to look at the page while developing
            Path(os.environ["MINITODDLER_SCREENSHOT"]).write_bytes(shot)
    finally:
        browser.close()
