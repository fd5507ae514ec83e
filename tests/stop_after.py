"""A stand-in for the training loops' StopFlag (their Ctrl-C handler), for the resume tests."""


def stop_after(n: int) -> type:
    """A StopFlag class whose `requested` turns true at its n-th read (a loop reads it once per step, so the
    run stops and saves after step n)."""
    class StopAfter:
        def __init__(self):
            self.reads = 0

        @property
        def requested(self):
            self.reads += 1
            return self.reads >= n
    return StopAfter
