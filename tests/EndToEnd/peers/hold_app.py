#!/usr/bin/python3
"""An app that holds every connection it accepts: never reads, never writes, never closes.

  hold_app.py PORT

Watches each connection's TCP state (TCP_INFO, so nothing is read from it) and prints a JSON line with
the time whenever the number still connected (ESTABLISHED or CLOSE_WAIT) changes; a connection the other
side reset (state CLOSE) is closed here and no longer counted. Runs until killed.
"""
import json
import select
import socket
import sys
import time

ESTABLISHED, CLOSE, CLOSE_WAIT = 1, 7, 8


def emit(**fields):
    print(json.dumps(fields), flush=True)


def state(sock):
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)[0]


def main():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", int(sys.argv[1])))
    listener.listen(1024)
    emit(listening=int(sys.argv[1]))
    held = []
    reported = 0
    while True:
        readable, _, _ = select.select([listener], [], [], 0.01)
        if readable:
            conn, _ = listener.accept()
            held.append(conn)
        still = []
        for conn in held:
            if state(conn) in (ESTABLISHED, CLOSE_WAIT):
                still.append(conn)
            else:
                conn.close()
        held = still
        if len(held) != reported:
            reported = len(held)
            emit(open=reported, t=time.time())


if __name__ == "__main__":
    main()
