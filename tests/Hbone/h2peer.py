#!/usr/bin/python3
"""An independent HTTP/2 CONNECT peer for Weft's HBONE interop tests, built on Debian's python3-h2.

  h2peer.py client PORT STREAMS BIG_MIB   open STREAMS CONNECTs to 127.0.0.1:PORT, send data on each
                                           (BIG_MIB MiB on the first), check every echo; prints OK ...
  h2peer.py client-limit PORT STREAMS     open STREAMS CONNECTs at once, before the server's SETTINGS can
                                           arrive (so h2 does not hold them back); report the server's
                                           SETTINGS_MAX_CONCURRENT_STREAMS, which streams got 200 and which
                                           RST_STREAM, and check the accepted ones still echo; prints LIMIT ...
  h2peer.py server MODE                    listen on 127.0.0.1 (random port, printed as "PORT n"), serve
                                           one connection: MODE echo | reject403 | goaway

h2 4.1 insists on :scheme and :path for every request, which RFC 9113 section 8.5 forbids for CONNECT,
so header *validation* is switched off where a CONNECT is sent or received. Framing, HPACK and flow
control stay h2's own. Exit status 0 means every check passed; everything is bounded by a deadline.
"""
import hashlib
import json
import random
import select
import socket
import sys
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings

DEADLINE = time.monotonic() + 90


def fail(message):
    print("FAIL " + message, flush=True)
    sys.exit(1)


def pump(sock, conn):
    data = conn.data_to_send()
    if data:
        sock.sendall(data)


def receive(sock, conn):
    if time.monotonic() > DEADLINE:
        fail("deadline passed")
    readable, _, _ = select.select([sock], [], [], 0.05)
    if not readable:
        return []
    data = sock.recv(1 << 20)
    if not data:
        return None
    return conn.receive_data(data)


def send_window(conn, sid, buffer):
    """Sends as much of buffer as the peer's windows allow; returns what is left."""
    while buffer:
        n = min(len(buffer), conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
        if n <= 0:
            break
        conn.send_data(sid, bytes(buffer[:n]))
        del buffer[:n]
    return buffer


def run_client(port, streams, big_mib):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    rng = random.Random(42)
    state = {}
    for i in range(streams):
        sid = conn.get_next_available_stream_id()
        size = big_mib * 1024 * 1024 if i == 0 else 1000 + i * 13
        payload = rng.randbytes(size)
        conn.send_headers(sid, [(":method", "CONNECT"), (":authority", "10.0.0.%d:80" % (i + 1)),
                                ("forwarded", 'for="10.244.1.2:%d"' % (40000 + i))])
        state[sid] = {"out": bytearray(payload), "sent_hash": hashlib.sha256(payload).hexdigest(),
                      "size": size, "in": hashlib.sha256(), "got": 0, "ok": False, "ended": False, "closed_out": False}
    pump(sock, conn)
    while not all(s["ended"] for s in state.values()):
        for sid, s in state.items():
            if s["ok"] and not s["closed_out"]:
                send_window(conn, sid, s["out"])
                if not s["out"]:
                    conn.end_stream(sid)
                    s["closed_out"] = True
        pump(sock, conn)
        events = receive(sock, conn)
        if events is None:
            fail("server closed the connection")
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers).get(":status")
                if status != "200":
                    fail("stream %d got status %s" % (event.stream_id, status))
                state[event.stream_id]["ok"] = True
            elif isinstance(event, h2.events.DataReceived):
                s = state[event.stream_id]
                s["in"].update(event.data)
                s["got"] += len(event.data)
                # Consumed: give the window back, as an application reading the data would.
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                state[event.stream_id]["ended"] = True
            elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                fail("unexpected %r" % event)
        pump(sock, conn)
    for sid, s in state.items():
        if s["got"] != s["size"] or s["in"].hexdigest() != s["sent_hash"]:
            fail("stream %d echoed %d of %d bytes or different bytes" % (sid, s["got"], s["size"]))
    conn.close_connection()
    pump(sock, conn)
    sock.close()
    print("OK streams=%d bytes=%d" % (streams, sum(s["size"] for s in state.values())), flush=True)


def run_client_limit(port, streams):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    ids = []
    for i in range(streams):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "CONNECT"), (":authority", "10.0.0.%d:80" % (i + 1))])
        ids.append(sid)
    pump(sock, conn)
    max_streams = None
    accepted, refused, other_reset = [], [], {}
    while len(accepted) + len(refused) + len(other_reset) < streams or max_streams is None:
        events = receive(sock, conn)
        if events is None:
            fail("server closed the connection")
        for event in events:
            if isinstance(event, h2.events.RemoteSettingsChanged):
                change = event.changed_settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
                if change is not None:
                    max_streams = change.new_value
            elif isinstance(event, h2.events.ResponseReceived):
                if dict(event.headers).get(":status") != "200":
                    fail("stream %d got status %s" % (event.stream_id, dict(event.headers).get(":status")))
                accepted.append(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                if event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM:
                    refused.append(event.stream_id)
                else:
                    other_reset[event.stream_id] = int(event.error_code)
            elif isinstance(event, h2.events.ConnectionTerminated):
                fail("GOAWAY %d" % event.error_code)
        pump(sock, conn)
    # The accepted streams still carry data both ways.
    echoed = {}
    for sid in accepted:
        conn.send_data(sid, b"still here %d" % sid, end_stream=True)
    pump(sock, conn)
    ended = set()
    while len(ended) < len(accepted):
        events = receive(sock, conn)
        if events is None:
            fail("server closed the connection while echoing")
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                echoed[event.stream_id] = echoed.get(event.stream_id, b"") + event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                fail("accepted stream %d reset with %d" % (event.stream_id, event.error_code))
        pump(sock, conn)
    for sid in accepted:
        if echoed.get(sid) != b"still here %d" % sid:
            fail("stream %d echoed %r" % (sid, echoed.get(sid)))
    conn.close_connection()
    pump(sock, conn)
    sock.close()
    print("LIMIT " + json.dumps({"max_concurrent_streams": max_streams, "accepted": sorted(accepted),
                                 "refused": sorted(refused), "other_reset": other_reset}), flush=True)


def run_server(mode):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    print("PORT %d" % listener.getsockname()[1], flush=True)
    listener.settimeout(30)
    sock, _ = listener.accept()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    config = h2.config.H2Configuration(client_side=False, validate_inbound_headers=False, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    pump(sock, conn)
    echo = {}   # stream id -> bytes waiting for window
    ended = set()
    while True:
        for sid, buffer in list(echo.items()):
            if sid not in conn.streams or conn.streams[sid].closed:
                del echo[sid]
                continue
            send_window(conn, sid, buffer)
            if not buffer and sid in ended:
                conn.end_stream(sid)
                del echo[sid]
        pump(sock, conn)
        events = receive(sock, conn)
        if events is None:
            print("CLOSED", flush=True)
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                headers = dict(event.headers)
                print("REQUEST " + json.dumps(headers), flush=True)
                if headers.get(":method") != "CONNECT" or ":authority" not in headers:
                    conn.reset_stream(event.stream_id, error_code=1)
                elif mode == "echo":
                    conn.send_headers(event.stream_id, [(":status", "200")])
                    echo[event.stream_id] = bytearray()
                elif mode == "reject403":
                    conn.send_headers(event.stream_id, [(":status", "403")], end_stream=True)
                elif mode == "goaway":
                    # Refuse everything: the stream was never processed, so the client may retry elsewhere.
                    conn.close_connection(error_code=0, last_stream_id=0)
            elif isinstance(event, h2.events.DataReceived):
                if event.stream_id in echo:
                    echo[event.stream_id].extend(event.data)
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                print("RESET %d %d" % (event.stream_id, event.error_code), flush=True)
                echo.pop(event.stream_id, None)
            elif isinstance(event, h2.events.ConnectionTerminated):
                print("GOAWAY %d" % event.error_code, flush=True)
        pump(sock, conn)


if __name__ == "__main__":
    if sys.argv[1] == "client":
        run_client(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1] == "client-limit":
        run_client_limit(int(sys.argv[2]), int(sys.argv[3]))
    else:
        run_server(sys.argv[2])
