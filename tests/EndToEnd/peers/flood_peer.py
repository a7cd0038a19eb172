#!/usr/bin/python3
"""An attacker with a valid SVID against a real agent's tunnel port, for the inbound limits test.

Run with Debian's /usr/bin/python3 (it has python3-h2). Every result is one JSON line on stdout.

  flood_peer.py HOST:PORT AUTHORITY --cert C --key K --ca CA [--tunnels N] [--streams N] [--extra N]
      Opens N mutual-TLS tunnels and on each M CONNECT streams to AUTHORITY, sends 1 KiB on every admitted
      stream and never reads what comes back (no WINDOW_UPDATE). Reports per answer ("flooded"), then
      opens --extra plain TCP connections to HOST:PORT that never start TLS and reports how many the agent
      reset at once ("extra"). Holds everything until a line (or EOF) on stdin, then drops it all at
      once ("released").
"""

import argparse
import collections
import errno
import json
import select
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


def emit(**fields):
    print(json.dumps(fields), flush=True)


def split_target(target):
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def tls_context(args):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["h2"])
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=args.ca)
    context.load_cert_chain(args.cert, args.key)
    return context


class Tunnel:
    def __init__(self, context, address):
        raw = socket.create_connection(address, timeout=10)
        self.tls = context.wrap_socket(raw, server_hostname=None)
        self.tls.setblocking(False)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8", validate_outbound_headers=False)
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.pending = b""
        self.status = {}
        self.reset = {}
        self.closed = False
        self.flush()

    def flush(self):
        self.pending += self.conn.data_to_send()
        while self.pending and not self.closed:
            try:
                sent = self.tls.send(self.pending)
            except (ssl.SSLWantWriteError, BlockingIOError):
                return
            except OSError:
                self.closed = True
                return
            self.pending = self.pending[sent:]

    def open_streams(self, authority, count):
        for _ in range(count):
            stream_id = self.conn.get_next_available_stream_id()
            # The attacker ignores the agent's SETTINGS_MAX_CONCURRENT_STREAMS; h2 would enforce it.
            self.conn.remote_settings._settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = collections.deque([1 << 30])
            self.conn.send_headers(stream_id, [(":method", "CONNECT"), (":authority", authority)])
        self.flush()

    def read(self):
        try:
            while True:
                data = self.tls.recv(65536)
                if not data:
                    self.closed = True
                    return
                self.handle(self.conn.receive_data(data))
        except (ssl.SSLWantReadError, BlockingIOError):
            pass
        except (OSError, h2.exceptions.ProtocolError):
            self.closed = True
        self.flush()

    def handle(self, events):
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers).get(":status")
                self.status[event.stream_id] = status
                if status == "200":
                    try:
                        self.conn.send_data(event.stream_id, b"x" * 1024)
                    except h2.exceptions.ProtocolError:
                        pass
            elif isinstance(event, h2.events.StreamReset):
                self.reset[event.stream_id] = int(event.error_code)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.closed = True
            # DATA is never acknowledged: the echo piles up against our windows, as a stalled reader's would.

    def answered(self):
        return len(set(self.status) | set(self.reset))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("authority")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--tunnels", type=int, default=200)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--extra", type=int, default=0)
    parser.add_argument("--settle-seconds", type=float, default=30)
    args = parser.parse_args()
    address = split_target(args.target)
    context = tls_context(args)
    started = time.monotonic()

    tunnels, handshake_failures = [], 0
    for _ in range(args.tunnels):
        try:
            tunnels.append(Tunnel(context, address))
        except (OSError, ssl.SSLError):
            handshake_failures += 1
    for tunnel in tunnels:
        tunnel.open_streams(args.authority, args.streams)

    # Until every stream has its answer (or its tunnel is gone), or the settle time runs out.
    expected = len(tunnels) * args.streams
    deadline = time.monotonic() + args.settle_seconds
    while time.monotonic() < deadline:
        live = [t for t in tunnels if not t.closed]
        if sum(t.answered() for t in tunnels) >= expected or not live:
            break
        readable, _, _ = select.select([t.tls for t in live], [], [], 0.5)
        by_socket = {t.tls: t for t in live}
        for sock in readable:
            by_socket[sock].read()
        for tunnel in live:
            tunnel.flush()

    statuses = {}
    for tunnel in tunnels:
        for status in tunnel.status.values():
            statuses[status] = statuses.get(status, 0) + 1
    resets = {}
    for tunnel in tunnels:
        for code in tunnel.reset.values():
            resets[str(code)] = resets.get(str(code), 0) + 1
    # Refused: answered with a status other than 200, or reset before any status.
    refused_streams = sum(1 for t in tunnels for i in set(t.status) | set(t.reset) if t.status.get(i) != "200")
    emit(kind="flooded", tunnels=len(tunnels), handshake_failures=handshake_failures, streams=expected,
         admitted=statuses.get("200", 0), refused=refused_streams, statuses=statuses, resets=resets, unanswered=expected - sum(t.answered() for t in tunnels),
         tunnels_closed=sum(1 for t in tunnels if t.closed), seconds=round(time.monotonic() - started, 3))

    # More: connections that never start TLS, counted against the source address from accept.
    extra, refused, refused_connect = [], 0, 0
    for _ in range(args.extra):
        try:
            extra.append(socket.create_connection(address, timeout=5))
        except OSError:
            refused_connect += 1
    # poll, not select: these descriptors are past select's 1024.
    deadline = time.monotonic() + 3
    waiting = {sock.fileno(): sock for sock in extra}
    poller = select.poll()
    for fd in waiting:
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    while waiting and time.monotonic() < deadline:
        for fd, _ in poller.poll(200):
            sock = waiting.pop(fd)
            poller.unregister(fd)
            try:
                if sock.recv(1) == b"":
                    refused += 1
            except OSError as e:
                if e.errno in (errno.ECONNRESET, errno.EPIPE):
                    refused += 1
    emit(kind="extra", opened=len(extra), refused=refused, connect_failed=refused_connect, silent=len(waiting))

    sys.stdin.readline()
    for sock in extra:
        sock.close()
    for tunnel in tunnels:
        tunnel.tls.close()
    emit(kind="released")


if __name__ == "__main__":
    main()
