using System.Diagnostics;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using Weft.Hbone;
using Weft.Identity;
using Weft.Inventory;
using Weft.Policy;
using Weft.Telemetry;

namespace Weft.Proxy;

/// <summary>
/// Inbound: connections for this pod from elsewhere.
/// <code>
///  [::]:15008  TLS 1.3 (client SVID verified) → HTTP/2 CONNECT podIP:port → authorize → app
///  [::]:15006  plaintext steered by sk_lookup  → STRICT refuses; PERMISSIVE authorizes → app
/// </code>
/// Nothing reaches the app before the connection is authorized.
/// </summary>
internal sealed partial class PodProxy
{
    /// <summary>A plaintext connection for this pod; the relay, once started, finishes it and its admission.</summary>
    private async Task HandlePassthroughAsync(Socket client, InboundLease admitted)
    {
        var relaying = false;
        try
        {
            relaying = await PassthroughAsync(client, admitted).ConfigureAwait(false);
        }
        finally
        {
            if (!relaying)
            {
                client.Dispose();
                admitted.Dispose();
            }
        }
    }

    private async Task<bool> PassthroughAsync(Socket client, InboundLease admitted)
    {
        var remote = (IPEndPoint)client.RemoteEndPoint!;
        var local = (IPEndPoint)client.LocalEndPoint!;
        var source = new IPEndPoint(Unmap(remote.Address), remote.Port);
        var original = new IPEndPoint(Unmap(local.Address), local.Port);
        var snapshot = _services.Inventory.Current;
        var flow = new Flow(FlowDirection.Inbound, source, original)
        {
            SourceWorkload = snapshot.TryGetWorkload(source.Address, out var from) ? FlowStrings.Workload(from!.Namespace, from.Name) : null,
            DestinationWorkload = Pod.Key,
            Destination = original,
        };
        if (InboundDecision.Plaintext(snapshot, Pod, source, original, _services.SelfTarget) is { } refused)
        {
            Refuse(client, flow, refused);
            return false;
        }

        if (!TryReserve())
        {
            _services.Admission.Refused(InboundRefusal.Pod, LimitReason);
            Refuse(client, flow, LimitError);
            return false;
        }

        var connection = new ProxyConnection(flow);
        _services.Tracker.Add(connection);
        var relaying = false;
        try
        {
            relaying = await PlaintextAsync(connection, client, original, new PlaintextEnd(this, admitted), deliverFrom: source.Address).ConfigureAwait(false);
            return relaying;
        }
        finally
        {
            if (!relaying)
            {
                Release();
                _services.Tracker.Remove(connection);
            }
        }
    }

    private async Task HandleTunnelAsync(Socket socket, InboundLease admitted)
    {
        using (admitted)
        {
            await _services.CountTunnelAsync(() => HandleTunnelAsync(socket)).ConfigureAwait(false);
        }
    }

    private async Task HandleTunnelAsync(Socket socket)
    {
        var remote = (IPEndPoint)socket.RemoteEndPoint!;
        var peerAddress = Unmap(remote.Address);
        var identity = _services.Identity!;
        var self = _services.IdentityOf(Pod.Namespace, Pod.ServiceAccount);

        // The record starts at accept, so a refused handshake's record covers the time it held the connection.
        var handshakeFlow = new Flow(FlowDirection.Inbound, new IPEndPoint(peerAddress, remote.Port), new IPEndPoint(Pod.Ipv4 ?? Pod.Ipv6!, HbonePool.TunnelPort))
        {
            DestinationWorkload = Pod.Key,
            DestinationPrincipal = FlowStrings.Shared(self.ToString()),
            SecurityPolicy = "mutual_tls",
        };

        // A handshake in progress counts against the pod's limit, so stalled handshakes cannot pile up unbounded.
        if (!TryReserve())
        {
            _services.Admission.Refused(InboundRefusal.Pod, LimitReason);
            Refuse(socket, handshakeFlow, LimitError);
            return;
        }

        var transport = new TunnelSocketStream(socket);
        var ssl = new TunnelTlsStream(transport);
        SpiffeId? peer = null;
        string? refusal = null;
        var started = Stopwatch.GetTimestamp();
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            timeout.CancelAfter(Options.ConnectTimeout * 2);
            var svid = await identity.GetAsync(self, timeout.Token).ConfigureAwait(false);
            var options = identity.Tls.ServerOptions(() => svid, (id, reason) => (peer, refusal) = (id, reason));
            await ssl.AuthenticateAsServerAsync(options, timeout.Token).ConfigureAwait(false);
            if (ssl.NegotiatedApplicationProtocol != SslApplicationProtocol.Http2)
            {
                throw new AuthenticationException("peer did not negotiate ALPN h2");
            }

            transport.ReadOnWatch();
        }
        catch (Exception e)
        {
            // A peer that cannot prove a mesh identity gets nothing: one record, one closed connection.
            _services.Tracker.Flows.Opened(handshakeFlow);
            handshakeFlow.Record(e is Weft.Identity.IdentityException { CertificateUnavailable: true }
                ? new ProxyError(ProxyErrorKind.NoCertificate, e.Message)
                : new ProxyError(ProxyErrorKind.TlsFailure, refusal ?? (e is OperationCanceledException ? "TLS handshake timed out" : e.Message)));
            _services.Tracker.Flows.Closed(handshakeFlow);
            await ssl.DisposeAsync().ConfigureAwait(false);
            return;
        }
        finally
        {
            Release();
        }

        var handshake = Stopwatch.GetElapsedTime(started);
        try
        {
            // Stopping (the agent replaced, or the pod gone) drains the tunnel: its peer moves new streams to a
            // new tunnel (the replacement agent's), the streams in it finish; the agent's drain deadline ends the rest.
            await HboneServer.RunConnectionAsync(ssl, request => HandleConnectAsync(request, peer!, self, peerAddress, handshake),
                _services.Hbone, CancellationToken.None, drain: _stop.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
        catch (Exception e)
        {
            Log.Debug("proxy", $"{Pod.Key}: tunnel from {peerAddress}: {e.Message}");
        }
        finally
        {
            await ssl.DisposeAsync().ConfigureAwait(false);
        }
    }

    private async Task HandleConnectAsync(HboneRequest request, SpiffeId peer, SpiffeId self, IPAddress tunnelSource, TimeSpan handshake)
    {
        var snapshot = _services.Inventory.Current;
        var source = ForwardedFor(request) ?? new IPEndPoint(tunnelSource, 0);
        var target = IPEndPoint.TryParse(request.Authority, out var parsed) ? new IPEndPoint(Unmap(parsed.Address), parsed.Port) : null;
        var flow = new Flow(FlowDirection.Inbound, source, target ?? new IPEndPoint(IPAddress.None, 0))
        {
            SourcePrincipal = FlowStrings.Shared(peer.ToString()),
            SourceWorkload = snapshot.TryGetWorkload(tunnelSource, out var from) ? FlowStrings.Workload(from!.Namespace, from.Name) : null,
            DestinationWorkload = Pod.Key,
            DestinationPrincipal = FlowStrings.Shared(self.ToString()),
            SecurityPolicy = "mutual_tls",
            TlsHandshakeTime = handshake,
            TraceParent = Header(request, "traceparent"),
            Destination = target,
        };
        if (InboundDecision.Connect(snapshot, Pod, request.Authority, target, peer, tunnelSource, _services.SelfTarget) is { } refused)
        {
            await RejectAsync(request, flow, refused.Kind == ProxyErrorKind.Denied ? 403 : 400, refused).ConfigureAwait(false);
            return;
        }

        Debug.Assert(target is not null, "InboundDecision.Connect admits only an authority naming this pod");

        // Each admitted stream holds a connection to the app: counted per peer identity and node-wide,
        // however many tunnels carry them and whatever SETTINGS the peer chose to ignore.
        var admitted = _services.Admission.TryAdmitStream(peer.ToString(), out var refusal);
        if (admitted is null)
        {
            await RejectAsync(request, flow, 503, new ProxyError(ProxyErrorKind.Overflow, refusal!)).ConfigureAwait(false);
            return;
        }

        var relaying = false;
        try
        {
            if (!TryReserve())
            {
                _services.Admission.Refused(InboundRefusal.Pod, LimitReason);
                await RejectAsync(request, flow, 503, LimitError).ConfigureAwait(false);
                return;
            }

            var connection = new ProxyConnection(flow);
            _services.Tracker.Add(connection);
            try
            {
                relaying = await ConnectAppAsync(connection, request, admitted, snapshot, source, target!, peer, tunnelSource).ConfigureAwait(false);
            }
            catch (Exception e) when (e is HboneException or OperationCanceledException or IOException)
            {
                flow.Error ??= e.Message;
            }
            finally
            {
                // A relay finishes the connection itself when it ends (InboundTunnelEnd).
                if (!relaying)
                {
                    Release();
                    _services.Tracker.Remove(connection);
                }
            }
        }
        finally
        {
            if (!relaying)
            {
                admitted.Dispose();
            }
        }
    }

    /// <summary>
    /// Dials the app and, once it answers, accepts the CONNECT and starts relaying: true when the relay took the
    /// connection over (<see cref="InboundTunnelEnd"/> finishes it and the request), false when the app could not be reached.
    /// </summary>
    private async Task<bool> ConnectAppAsync(ProxyConnection connection, HboneRequest request, InboundLease admitted, InventorySnapshot snapshot,
        IPEndPoint source, IPEndPoint target, SpiffeId peer, IPAddress tunnelSource)
    {
        var flow = connection.Flow;
        Socket upstream;
        var started = Stopwatch.GetTimestamp();
        try
        {
            // A tunnel that ends while we dial takes the dial with it; stopping does not: a stream taken before
            // the drain's GOAWAY is one the peer will not retry elsewhere, so it is carried (the connect has its
            // own timeout, and the agent's drain deadline ends what is left).
            upstream = await _services.Sockets.DeliverAsync(Pod, DeliverFrom(snapshot, source.Address, peer, tunnelSource), target, Options, request.Aborted).ConfigureAwait(false);
        }
        catch (SocketException e)
        {
            flow.Record(ProxyError.OfConnectFailure(e, target));
            await request.RejectAsync(503).ConfigureAwait(false);
            return false;
        }
        finally
        {
            // The relay hears of an abort from the stream itself; the dial's token has done its work.
            request.Stream.ReleaseAbortedToken();
        }

        flow.ConnectTime = Stopwatch.GetElapsedTime(started);
        try
        {
            var stream = await request.AcceptAsync().ConfigureAwait(false);
            // From here the relay runs on its own, and the request stays open until the relay finishes it: a held
            // connection keeps no waiting method frames.
            connection.StartRelay(upstream, stream, socketIsClient: false, new InboundTunnelEnd(this, request, admitted, tunnelSource));
            request.Detach();
            return true;
        }
        catch
        {
            upstream.Dispose();
            throw;
        }
    }

    /// <summary>Finishes an inbound tunnelled connection once its relay has ended: what its CONNECT handler would do after awaiting it.</summary>
    private sealed class InboundTunnelEnd(PodProxy proxy, HboneRequest request, InboundLease admitted, IPAddress tunnelSource) : IRelayEnd<StreamRelay>
    {
        public void RelayEnded(StreamRelay relay) => _ = proxy.FinishInboundTunnelAsync(relay, request, admitted, tunnelSource);
    }

    private async Task FinishInboundTunnelAsync(StreamRelay relay, HboneRequest request, InboundLease admitted, IPAddress tunnelSource)
    {
        var connection = (ProxyConnection)relay.Observer;
        var flow = connection.Flow;
        try
        {
            connection.RecordTcpRtt(relay.Socket);
            if (relay.Stream.ConnectionLoss is { } lost)
            {
                flow.Record(new ProxyError(ProxyErrorKind.DownstreamTermination, $"tunnel from {tunnelSource} lost: {lost.Message}"));
            }

            await relay.Stream.DisposeAsync().ConfigureAwait(false);
        }
        catch (Exception e) when (e is HboneException or OperationCanceledException or IOException)
        {
            flow.Error ??= e.Message;
        }
        finally
        {
            relay.Socket.Dispose();
            Release();
            _services.Tracker.Remove(connection);
            admitted.Dispose();
        }

        await request.FinishAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// The address the app is shown for a tunnelled connection: the one the peer's Forwarded header names when it is a
    /// workload of the peer's own identity (tunnels are pooled per identity, so the tunnel's source may be another pod
    /// of that service account), else the tunnel's source. A peer cannot make the app see another identity's address.
    /// </summary>
    private static IPAddress DeliverFrom(InventorySnapshot snapshot, IPAddress forwarded, SpiffeId peer, IPAddress tunnelSource) =>
        !forwarded.Equals(tunnelSource) && snapshot.TryGetWorkload(forwarded, out var workload)
            && workload.Namespace == peer.Namespace && workload.ServiceAccount == peer.ServiceAccount
            ? forwarded
            : tunnelSource;

    private async Task RejectAsync(HboneRequest request, Flow flow, int status, ProxyError error)
    {
        flow.Record(error);
        _services.Tracker.Flows.Opened(flow);
        try
        {
            await request.RejectAsync(status).ConfigureAwait(false);
        }
        catch (Exception e) when (e is HboneException or IOException or OperationCanceledException)
        {
        }

        _services.Tracker.Flows.Closed(flow);
    }

    private static string? Header(HboneRequest request, string name) => Header(request.Headers, name);

    private static string? Header(IReadOnlyList<KeyValuePair<string, string>> headers, string name)
    {
        foreach (var (key, value) in headers)
        {
            if (string.Equals(key, name, StringComparison.OrdinalIgnoreCase))
            {
                return value;
            }
        }

        return null;
    }

    /// <summary>The client's address from <c>Forwarded: for="ip:port"</c> (RFC 7239), when present and well formed.</summary>
    private static IPEndPoint? ForwardedFor(HboneRequest request) => ForwardedFor(request.Headers);

    /// <inheritdoc cref="ForwardedFor(HboneRequest)"/>
    internal static IPEndPoint? ForwardedFor(IReadOnlyList<KeyValuePair<string, string>> headers)
    {
        var value = Header(headers, "forwarded");
        if (value is null)
        {
            return null;
        }

        foreach (var part in value.Split(';', ','))
        {
            var pair = part.Trim();
            if (pair.StartsWith("for=", StringComparison.OrdinalIgnoreCase))
            {
                var address = pair[4..].Trim('"');
                return IPEndPoint.TryParse(address, out var endpoint) ? new IPEndPoint(Unmap(endpoint.Address), endpoint.Port) : null;
            }
        }

        return null;
    }
}
