#!/usr/bin/python3
"""An HBONE peer that is not Weft: python3-h2 over Python's ssl, for end-to-end tests against a real agent.

Run with Debian's /usr/bin/python3 (it has python3-h2). Every result is one JSON line on stdout.

  hbone_peer.py connect HOST:PORT AUTHORITY --cert C --key K --ca CA [--streams N] [--bytes N] [--window N]
      TLS 1.3 + ALPN h2 without SNI, presenting the SVID in C/K and checking the agent's chain against CA;
      opens N CONNECT streams to AUTHORITY at once, sends N distinct payloads, reads the echo back and
      reports each stream's status and whether what came back is what went out.

  hbone_peer.py hold HOST:PORT AUTHORITY --cert C --key K --ca CA [--streams N] --kill-when FILE
      Opens N CONNECT streams to AUTHORITY, sends a few bytes on each and half-closes (END_STREAM) every
      other one, prints {"kind": "held"}, waits until FILE exists, then resets the tunnel's TCP connection
      (SO_LINGER 0) and prints {"kind": "killed", "t": <unix time of the reset>}.

  hbone_peer.py flood HOST:PORT AUTHORITY --cert C --key K --ca CA --streams N
      Opens N CONNECT streams at once, before the agent's SETTINGS arrive (so h2 does not hold any back),
      and reports the advertised SETTINGS, how many were answered 200 and how many reset (by code); then
      checks the first accepted stream still echoes.

  hbone_peer.py bad CASE HOST:PORT AUTHORITY --cert C --key K --ca CA
      Keeps one healthy tunnel with an open echo stream, does CASE on a second connection, then checks
      the healthy stream still echoes. CASE: garbage, stall-tls, stall-tls-500, slow-preface, settings-len5, ping-len7,
      window-update-len3, rst-stream-len3, data-too-long, huge-header-block, hpack-bomb, idle-after-tls,
      openssl-no-cert, openssl-other-ca, openssl-server-auth-only (openssl s_client; the last two present
      --other-cert/--other-key: an SVID from a CA the mesh does not trust, or one from the mesh CA without clientAuth).
"""

import argparse
import hashlib
import json
import os
import select
import socket
import ssl
import struct
import subprocess
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.settings

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4


def emit(**fields):
    print(json.dumps(fields), flush=True)


def payload(stream_index, size):
    # Distinct per stream, so a stream that receives another stream's bytes is caught.
    seed = hashlib.sha256(b"weft-interop-%d" % stream_index).digest()
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def split_target(target):
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def tls_context(args, with_cert=True):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["h2"])
    # Pods have no host names: the agent's SVID names a SPIFFE ID, checked by the test from the report.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=args.ca)
    if with_cert:
        context.load_cert_chain(args.cert, args.key)
    return context


def open_tls(args, timeout=10.0):
    host, port = split_target(args.target)
    raw = socket.create_connection((host, port), timeout=timeout)
    # server_hostname=None: no SNI extension at all, as HBONE requires.
    tls = tls_context(args).wrap_socket(raw, server_hostname=None)
    return tls


def peer_identity(tls):
    cert = tls.getpeercert() or {}
    return [value for kind, value in cert.get("subjectAltName", ()) if kind == "URI"]


class Tunnel:
    """One h2 client connection over TLS with a tiny blocking event loop."""

    def __init__(self, args, window=None):
        self.tls = open_tls(args)
        # h2 4.1 insists on :scheme and :path in every request, but a plain CONNECT (RFC 9113 8.5) must
        # carry neither: outbound validation off, the agent's answers are still validated.
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8", validate_outbound_headers=False)
        self.conn = h2.connection.H2Connection(config=config)
        if window:
            self.conn.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.conn.initiate_connection()
        self.flush()
        self.remote_settings = {}
        self.status = {}
        self.received = {}
        self.ended = set()
        self.reset = {}
        self.goaway = None
        self.ping_acked = False
        self.closed = False

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.tls.sendall(data)

    def pump(self, timeout):
        """Waits up to timeout for bytes from the agent and handles the events they carry."""
        if self.closed:
            return
        if not self.tls.pending():
            readable, _, _ = select.select([self.tls], [], [], timeout)
            if not readable:
                return
        try:
            data = self.tls.recv(65536)
        except (ssl.SSLError, OSError) as error:
            self.closed = True
            self.close_reason = str(error)
            return
        if not data:
            self.closed = True
            return
        for event in self.conn.receive_data(data):
            self.on_event(event)
        self.flush()

    def on_event(self, event):
        if isinstance(event, h2.events.RemoteSettingsChanged):
            for code, change in event.changed_settings.items():
                self.remote_settings[h2.settings.SettingCodes(code).name] = change.new_value
        elif isinstance(event, h2.events.ResponseReceived):
            self.status[event.stream_id] = dict(event.headers).get(":status")
        elif isinstance(event, h2.events.DataReceived):
            self.received.setdefault(event.stream_id, bytearray()).extend(event.data)
            # Give the window back only once the bytes are ours: this is what drives the agent's sending.
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.ended.add(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.reset[event.stream_id] = int(event.error_code)
            self.ended.add(event.stream_id)
        elif isinstance(event, h2.events.PingAckReceived):
            self.ping_acked = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = int(event.error_code)

    def open_stream(self, authority):
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, [(":method", "CONNECT"), (":authority", authority),
                                           ("user-agent", "python3-h2 interop peer")])
        self.flush()
        return stream_id

    def wait_status(self, stream_id, deadline):
        while stream_id not in self.status and stream_id not in self.ended and not self.closed and time.time() < deadline:
            self.pump(0.2)
        return self.status.get(stream_id)

    def send_some(self, stream_id, data, offset):
        """Sends what the agent's windows allow from offset; returns the new offset."""
        window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
        if offset < len(data) and window > 0:
            chunk = data[offset:offset + window]
            self.conn.send_data(stream_id, chunk)
            offset += len(chunk)
            self.flush()
        return offset

    def close(self):
        try:
            self.conn.close_connection()
            self.flush()
            self.tls.close()
        except (ssl.SSLError, OSError):
            pass


def exchange(tunnel, authority, sizes, deadline):
    """Opens one CONNECT stream per size, sends each its payload, half-closes, reads the echo."""
    streams = {}
    for index, size in enumerate(sizes):
        streams[tunnel.open_stream(authority)] = payload(index, size)
    offsets = dict.fromkeys(streams, 0)
    half_closed = set()
    for stream_id in streams:
        tunnel.wait_status(stream_id, deadline)
    while time.time() < deadline and not tunnel.closed and not all(s in tunnel.ended for s in streams):
        for stream_id, data in streams.items():
            if tunnel.status.get(stream_id) != "200" or stream_id in half_closed or stream_id in tunnel.ended:
                continue
            offsets[stream_id] = tunnel.send_some(stream_id, data, offsets[stream_id])
            if offsets[stream_id] == len(data):
                tunnel.conn.end_stream(stream_id)
                tunnel.flush()
                half_closed.add(stream_id)
        tunnel.pump(0.05)
    results = []
    for stream_id, data in streams.items():
        got = bytes(tunnel.received.get(stream_id, b""))
        results.append(dict(stream=stream_id, status=tunnel.status.get(stream_id), sent=offsets[stream_id], received=len(got),
                            identical=got == data, ended=stream_id in tunnel.ended, reset=tunnel.reset.get(stream_id)))
    return results


def connect(args):
    deadline = time.time() + args.timeout
    tunnel = Tunnel(args, window=args.window)
    tunnel.conn.ping(b"weftping")
    tunnel.flush()
    # SETTINGS and the connection WINDOW_UPDATE arrive right after the handshake.
    settle = time.time() + 1.0
    while time.time() < settle and not (tunnel.remote_settings and tunnel.ping_acked):
        tunnel.pump(0.1)
    emit(kind="tunnel", tls=tunnel.tls.version(), alpn=tunnel.tls.selected_alpn_protocol(),
         server_uris=peer_identity(tunnel.tls), settings=tunnel.remote_settings,
         connection_window=tunnel.conn.outbound_flow_control_window, ping_acked=tunnel.ping_acked)
    for result in exchange(tunnel, args.authority, [args.bytes + i * 4099 for i in range(args.streams)], deadline):
        emit(kind="stream", **result)
    tunnel.close()
    emit(kind="done", goaway=tunnel.goaway)


def hold(args):
    deadline = time.time() + args.timeout
    tunnel = Tunnel(args)
    streams = [tunnel.open_stream(args.authority) for _ in range(args.streams)]
    statuses = [tunnel.wait_status(stream_id, deadline) for stream_id in streams]
    if any(status != "200" for status in statuses):
        emit(kind="held", ok=False, statuses=statuses)
        return 1
    for index, stream_id in enumerate(streams):
        tunnel.conn.send_data(stream_id, b"held %d" % index, end_stream=index % 2 == 1)
    tunnel.flush()
    emit(kind="held", ok=True, streams=streams)
    while not os.path.exists(args.kill_when) and time.time() < deadline and not tunnel.closed:
        tunnel.pump(0.05)
    if tunnel.closed:
        emit(kind="killed", ok=False, reason="the agent closed the tunnel first")
        return 1
    tunnel.tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    killed = time.time()
    tunnel.tls.close()
    emit(kind="killed", ok=True, t=killed)
    return 0


def flood(args):
    deadline = time.time() + args.timeout
    tunnel = Tunnel(args)
    streams = [tunnel.open_stream(args.authority) for _ in range(args.streams)]
    while time.time() < deadline and not tunnel.closed and not all(s in tunnel.status or s in tunnel.reset for s in streams):
        tunnel.pump(0.1)
    accepted = [s for s in streams if tunnel.status.get(s) == "200"]
    codes = {}
    for s in streams:
        if s in tunnel.reset:
            codes[str(tunnel.reset[s])] = codes.get(str(tunnel.reset[s]), 0) + 1
    echoed = False
    if accepted:
        first = accepted[0]
        tunnel.received[first] = bytearray()
        tunnel.conn.send_data(first, b"still served", end_stream=True)
        tunnel.flush()
        while first not in tunnel.ended and time.time() < deadline and not tunnel.closed:
            tunnel.pump(0.1)
        echoed = bytes(tunnel.received.get(first, b"")) == b"still served"
    tunnel.close()
    emit(kind="flood", settings=tunnel.remote_settings, accepted=len(accepted), reset_codes=codes, echoed=echoed,
         closed=tunnel.closed, goaway=tunnel.goaway)
    return 0


# ---- bad input ----------------------------------------------------------------------------------


def frame(kind, flags, stream_id, body, claimed_length=None):
    length = len(body) if claimed_length is None else claimed_length
    return struct.pack(">I", length)[1:] + bytes([kind, flags]) + struct.pack(">I", stream_id) + body


def hpack_int(value, prefix_bits, first_byte_flags):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte_flags | value])
    out = bytearray([first_byte_flags | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name_index, value):
    # Literal header field without indexing, indexed name (RFC 7541 6.2.2), no Huffman.
    value = value.encode()
    return hpack_int(name_index, 4, 0x00) + hpack_int(len(value), 7, 0x00) + value


def connect_block(authority):
    return hpack_literal(2, "CONNECT") + hpack_literal(1, authority)


def read_until_closed(sock, seconds):
    """Reads raw HTTP/2 frames until the peer closes: returns (closed, goaway error code or None, elapsed)."""
    started = time.time()
    buffer = b""
    goaway = None
    sock.settimeout(0.5)
    while time.time() - started < seconds:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except ssl.SSLWantReadError:
            continue
        except (ssl.SSLError, OSError):
            return True, goaway, time.time() - started
        if not data:
            return True, goaway, time.time() - started
        buffer += data
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, body = buffer[3], buffer[9:9 + length]
            if kind == GOAWAY and len(body) >= 8:
                goaway = struct.unpack(">I", body[4:8])[0]
            buffer = buffer[9 + length:]
    return False, goaway, time.time() - started


def send_all_tolerant(sock, data):
    """Sends until done or the agent closes on us (which is the point); returns bytes sent."""
    sent = 0
    try:
        while sent < len(data):
            sent += sock.send(data[sent:sent + 16384])
    except (ssl.SSLError, OSError):
        pass
    return sent


def raw_tunnel(args):
    """TLS with the SVID, then our own bytes: preface and SETTINGS, nothing else yet."""
    tls = open_tls(args)
    tls.sendall(PREFACE + frame(SETTINGS, 0, 0, b""))
    return tls


def bad_frame_case(args, bad):
    tls = raw_tunnel(args)
    sent = send_all_tolerant(tls, bad)
    closed, goaway, elapsed = read_until_closed(tls, 15)
    tls.close()
    return dict(closed=closed, goaway=goaway, seconds=round(elapsed, 3), sent=sent)


def case_garbage(args):
    host, port = split_target(args.target)
    sock = socket.create_connection((host, port), timeout=10)
    junk = b"GET / HTTP/1.1\r\nHost: weft\r\n\r\n" + os.urandom(4096)
    sent = send_all_tolerant(sock, junk)
    started = time.time()
    sock.settimeout(15)
    answer = b""
    closed = False
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                closed = True
                break
            answer += data
    except socket.timeout:
        pass
    except OSError:
        closed = True
    sock.close()
    return dict(closed=closed, seconds=round(time.time() - started, 3), sent=sent, answer_bytes=len(answer),
                answer_head=answer[:8].hex())


def case_stall_tls(args):
    # The first bytes of a ClientHello record, then nothing: the handshake can never finish.
    host, port = split_target(args.target)
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03]))
    started = time.time()
    sock.settimeout(30)
    closed = False
    try:
        while sock.recv(4096):
            pass
        closed = True
    except socket.timeout:
        pass
    except OSError:
        closed = True
    sock.close()
    return dict(closed=closed, seconds=round(time.time() - started, 3))


def case_stall_tls_many(args, healthy, count=500):
    # Many handshakes left hanging at once; the healthy tunnel is served (and answers PINGs) meanwhile.
    host, port = split_target(args.target)
    hello = bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03])
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((host, port), timeout=10)
        sock.sendall(hello)
        sock.setblocking(False)
        sockets.append(sock)
    started = time.time()
    open_sockets = set(sockets)
    while open_sockets and time.time() - started < 30:
        healthy.pump(0.05)
        readable, _, _ = select.select(list(open_sockets), [], [], 0.2)
        for sock in readable:
            try:
                if sock.recv(4096):
                    continue
            except OSError:
                pass
            open_sockets.discard(sock)
    for sock in sockets:
        sock.close()
    return dict(closed=not open_sockets, count=count, still_open=len(open_sockets), seconds=round(time.time() - started, 3))


def case_slow_preface(args):
    # A legitimate but very slow client: every preface byte in its own TLS record, a quarter second apart.
    tls = open_tls(args)
    started = time.time()
    for byte in PREFACE:
        tls.sendall(bytes([byte]))
        time.sleep(args.byte_delay)
    tls.sendall(frame(SETTINGS, 0, 0, b""))
    # Then a real request on the same connection: the slowness cost nothing but time.
    tls.sendall(frame(HEADERS, END_HEADERS, 1, connect_block(args.authority)))
    status = None
    buffer = b""
    tls.settimeout(10)
    echoed = b""
    message = b"slow but well formed"
    data_sent = False
    deadline = time.time() + 15
    while time.time() < deadline and (status is None or len(echoed) < len(message)):
        try:
            data = tls.recv(65536)
        except (socket.timeout, ssl.SSLError, OSError):
            break
        if not data:
            break
        buffer += data
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, flags, stream = buffer[3], buffer[4], int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
            body = buffer[9:9 + length]
            buffer = buffer[9 + length:]
            if kind == SETTINGS and not flags & ACK:
                tls.sendall(frame(SETTINGS, ACK, 0, b""))
            elif kind == PING and not flags & ACK:
                tls.sendall(frame(PING, ACK, 0, body))
            elif kind == HEADERS and stream == 1:
                # The agent's response block: ":status 200" is static table index 8 (0x88).
                status = "200" if body[:1] == b"\x88" else body.hex()
                if status == "200" and not data_sent:
                    tls.sendall(frame(DATA, END_STREAM, 1, message))
                    data_sent = True
            elif kind == DATA and stream == 1:
                echoed += body
    tls.close()
    return dict(seconds=round(time.time() - started, 3), status=status, echoed=echoed == message)


def case_openssl(args, cert=None, key=None):
    # openssl s_client as the client: TLS 1.3, ALPN h2, no SNI; stdin stays open so only the agent can end it.
    command = ["/usr/bin/openssl", "s_client", "-connect", args.target, "-tls1_3", "-alpn", "h2", "-noservername",
               "-CAfile", args.ca, "-verify_return_error"]
    if cert:
        command += ["-cert", cert, "-key", key]
    started = time.time()
    client = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = client.communicate(timeout=20)
        closed = True
    except subprocess.TimeoutExpired:
        client.kill()
        output, _ = client.communicate()
        closed = False
    text = output.decode(errors="replace")
    alerts = sorted({line.split("alert", 1)[1].strip() for line in text.splitlines() if "alert" in line})
    return dict(closed=closed, seconds=round(time.time() - started, 3), exit=client.returncode, alerts=alerts,
                handshake="Protocol  : TLSv1.3" in text or "TLSv1.3" in text, tail=text[-600:])


def case_idle_after_tls(args, healthy):
    # A client with a valid SVID that sends half a preface and then nothing, never answering a PING.
    # The healthy tunnel keeps answering its own PINGs meanwhile, so only the idle one should be cut off.
    tls = open_tls(args)
    tls.sendall(PREFACE[:10])
    tls.setblocking(False)
    started = time.time()
    received = 0
    closed = False
    while time.time() - started < 70 and not closed:
        healthy.pump(0.1)
        readable, _, _ = select.select([tls], [], [], 0.1)
        while readable or tls.pending():
            try:
                data = tls.recv(65536)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLError, OSError):
                closed = True
                break
            if not data:
                closed = True
                break
            received += len(data)
            readable = []
    tls.close()
    return dict(closed=closed, seconds=round(time.time() - started, 3), received=received)


def case_huge_header_block(args):
    # A CONNECT with a 1 MiB header value: HEADERS then CONTINUATIONs of 16 KiB, never END_HEADERS in time.
    block = connect_block(args.authority) + bytes([0x00]) + hpack_int(5, 7, 0) + b"x-big" + \
        hpack_int(1 << 20, 7, 0) + b"a" * (1 << 20)
    chunks = [block[i:i + 16384] for i in range(0, len(block), 16384)]
    frames = frame(HEADERS, 0, 1, chunks[0]) + b"".join(
        frame(CONTINUATION, END_HEADERS if i == len(chunks) - 1 else 0, 1, c) for i, c in enumerate(chunks[1:], 1))
    return bad_frame_case(args, frames)


def case_hpack_bomb(args):
    # 4000 bytes into the dynamic table once, then referenced 2000 times: 8 MB of headers from 6 KB of input.
    value = b"b" * 4000
    block = connect_block(args.authority) + bytes([0x40]) + hpack_int(4, 7, 0) + b"bomb" + hpack_int(len(value), 7, 0) + value
    block += bytes([0x80 | 62]) * 2000
    return bad_frame_case(args, frame(HEADERS, END_HEADERS, 1, block))


BAD_FRAMES = {
    # RFC 9113 6.5: SETTINGS length not a multiple of 6.
    "settings-len5": frame(SETTINGS, 0, 0, b"\x00\x04\x00\x01\x00"),
    # 6.7: PING must be 8 bytes.
    "ping-len7": frame(PING, 0, 0, b"1234567"),
    # 6.9: WINDOW_UPDATE must be 4 bytes.
    "window-update-len3": frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"),
    # 6.4: RST_STREAM must be 4 bytes.
    "rst-stream-len3": frame(RST_STREAM, 0, 1, b"\x00\x00\x08"),
    # 4.2: a header claiming 16 MiB - 1 with nothing behind it: the header alone must be refused.
    "data-too-long": frame(DATA, 0, 1, b"", claimed_length=0xFFFFFF),
}


def bad(args):
    # A healthy tunnel first, with a stream held open across the bad connection's life.
    healthy = Tunnel(args)
    deadline = time.time() + 20
    stream_id = healthy.open_stream(args.authority)
    before_status = healthy.wait_status(stream_id, deadline)
    first = b"before " * 100
    healthy.conn.send_data(stream_id, first)
    healthy.flush()
    while len(healthy.received.get(stream_id, b"")) < len(first) and time.time() < deadline and not healthy.closed:
        healthy.pump(0.1)
    before = bytes(healthy.received.get(stream_id, b"")) == first

    case = args.case
    if case == "garbage":
        result = case_garbage(args)
    elif case == "stall-tls":
        result = case_stall_tls(args)
    elif case == "slow-preface":
        result = case_slow_preface(args)
    elif case == "openssl-no-cert":
        result = case_openssl(args)
    elif case in ("openssl-other-ca", "openssl-server-auth-only"):
        result = case_openssl(args, args.other_cert, args.other_key)
    elif case == "stall-tls-500":
        result = case_stall_tls_many(args, healthy)
    elif case == "idle-after-tls":
        result = case_idle_after_tls(args, healthy)
    elif case == "huge-header-block":
        result = case_huge_header_block(args)
    elif case == "hpack-bomb":
        result = case_hpack_bomb(args)
    elif case in BAD_FRAMES:
        result = bad_frame_case(args, BAD_FRAMES[case])
    else:
        raise SystemExit("unknown case " + case)

    # The healthy stream still carries bytes both ways and ends cleanly.
    deadline = time.time() + 20
    second = b"after " * 100
    healthy.received[stream_id] = bytearray()
    if not healthy.closed:
        try:
            healthy.conn.send_data(stream_id, second, end_stream=True)
            healthy.flush()
        except Exception as error:  # noqa: BLE001 - reported, not raised: the test reads it
            result["healthy_error"] = repr(error)
    while stream_id not in healthy.ended and time.time() < deadline and not healthy.closed:
        healthy.pump(0.1)
    after = bytes(healthy.received.get(stream_id, b"")) == second and stream_id in healthy.ended
    healthy.close()
    emit(kind="bad", case=case, healthy_status=before_status, healthy_before=before, healthy_after=after, **result)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["connect", "bad", "hold", "flood"])
    parser.add_argument("rest", nargs="+")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--other-cert")
    parser.add_argument("--other-key")
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--bytes", type=int, default=256 * 1024)
    parser.add_argument("--window", type=int)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--byte-delay", type=float, default=0.25)
    parser.add_argument("--kill-when")
    args = parser.parse_args()
    if args.mode == "connect":
        args.target, args.authority = args.rest
        connect(args)
    elif args.mode == "hold":
        args.target, args.authority = args.rest
        return hold(args)
    elif args.mode == "flood":
        args.target, args.authority = args.rest
        return flood(args)
    else:
        args.case, args.target, args.authority = args.rest
        bad(args)


if __name__ == "__main__":
    sys.exit(main())
