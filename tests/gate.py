"""A model behind a turnstile, for the engine and server tests: each forward call (a prefill or a decoding
step) waits for a permit, so a test decides how far the engine runs and what happens between its steps,
without timing anything."""
import threading


class Gate:
    def __init__(self, model):
        self.model = model
        self.cond = threading.Condition()
        self.permits, self.calls, self.waiting, self.open = 0, 0, False, False

    def __getattr__(self, name):  # cfg, embed_tokens, eval, ...: the model's own
        return getattr(self.model, name)

    def __call__(self, *args, **kwargs):
        with self.cond:
            self.waiting = True
            self.cond.notify_all()
            if not self.cond.wait_for(lambda: self.open or self.permits > 0, timeout=120):
                raise TimeoutError("the test never let this forward call through")
            self.waiting = False
            self.permits -= not self.open
            self.calls += 1
        return self.model(*args, **kwargs)

    def advance(self, n: int = 0) -> None:
        """Let n more calls through; return when they are made and the engine waits at the next one."""
        with self.cond:
            self.permits += n
            target = self.calls + n
            self.cond.notify_all()
            assert self.cond.wait_for(lambda: self.calls >= target and self.waiting, timeout=120), \
                f"the engine made {self.calls} of {target} forward calls and did not come back to the gate"

    def release(self) -> None:
        with self.cond:
            self.open = True
            self.cond.notify_all()

    def hold(self) -> None:
        with self.cond:
            self.open, self.permits = False, 0
