#!/usr/bin/env python3
"""A writer's CPU per frame for one burst of WebSocket frames sent to a
loopback TCP socket two ways: one `writev` of each frame's 4-byte header
and its payload (2 slices a frame), or one `send` of the burst laid out
flat (the layout included in the cost). Isolates what `ws::conn::wire`
chooses between, without the server around it:

    scripts/burst-write.py [BURSTS] [FRAMES]     default 20000 64

CPU is the writing process's (user and system, from getrusage); on
loopback the system time includes the receiving side's TCP work, the same
for both ways. A forked reader drains the socket.
"""
import os
import resource
import socket
import sys

bursts = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
frames = int(sys.argv[2]) if len(sys.argv) > 2 else 64
PAYLOAD = 424  # a message frame of the fan-out bench

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
if os.fork() == 0:
    reader = socket.create_connection(listener.getsockname())
    buf = bytearray(1 << 20)
    while reader.recv_into(buf):
        pass
    os._exit(0)
sock, _ = listener.accept()
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
head = bytes([0x81, 126]) + PAYLOAD.to_bytes(2, "big")
slices = [head, b"x" * PAYLOAD] * frames


def per_frame(way):
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(bursts):
        if way == "writev":
            sent = os.writev(sock.fileno(), slices)
            if sent != (len(head) + PAYLOAD) * frames:
                raise SystemExit("short writev; use fewer frames")
        else:
            sock.sendall(b"".join(slices))
    after = resource.getrusage(resource.RUSAGE_SELF)
    scale = 1e9 / bursts / frames
    return ((after.ru_utime - before.ru_utime) * scale,
            (after.ru_stime - before.ru_stime) * scale)


for _ in range(3):
    for way in ("writev", "flat"):
        user, system = per_frame(way)
        print(f"{way:6} {frames} frames a burst: user {user:5.1f} "
              f"system {system:6.1f} total {user + system:6.1f} ns per frame")
sock.close()
os.wait()
