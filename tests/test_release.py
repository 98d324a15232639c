"""Sockets let go without I/O: kept transports stay quiet through interpreter exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap

EXITS_WITH_A_KEPT_STREAM = textwrap.dedent(
    """
    import asyncio, gc, socket
    from loopsafe._release import release_transport

    ours, theirs = socket.socketpair()

    async def main():
        reader, writer = await asyncio.open_connection(sock=ours)
        # On a live loop the transport cannot give its socket up: it is kept for good.
        release_transport(writer.transport, reader, writer)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(main())
    loop.close()
    gc.collect()
    theirs.close()
    print("exiting")
    """
)


def test_a_stream_kept_past_its_loop_does_not_warn_at_interpreter_exit() -> None:
    """It used to print "ResourceWarning: loop is closed" from StreamWriter.__del__ at exit."""
    done = subprocess.run(
        [
            sys.executable,
            "-X",
            "dev",
            "-W",
            "error::ResourceWarning",
            "-c",
            EXITS_WITH_A_KEPT_STREAM,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "exiting"), done.stderr
    assert done.stderr == ""
