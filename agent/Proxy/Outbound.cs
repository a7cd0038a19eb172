using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Weft.Hbone;
using Weft.Identity;
using Weft.Inventory;
using Weft.Policy;
using Weft.Telemetry;

namespace Weft.Proxy;

/// <summary>
/// Outbound: a connection the pod's app opened, handed over by connect4.
/// <code>
///  accept on 127.0.0.1:15001 → original destination from the BPF map → Service VIP? pick a ready endpoint
///    destination is a meshed pod on this node  → in-process short cut to its inbound side (authorized)
///    destination is a meshed pod elsewhere     → HBONE stream in a pooled mTLS tunnel to podIP:15008
///    anything else                             → plaintext, from inside the pod's netns
/// </code>
/// </summary>
internal sealed partial class PodProxy
{
    private async Task HandleOutboundAsync(Socket client)
    {
        var remote = (IPEndPoint)client.RemoteEndPoint!;
        var family = remote.AddressFamily;
        if (!_services.OriginalDestinations.TryTake(Pod.NetnsCookie, (ushort)remote.Port, family, out var original))
        {
            // Nothing recorded this connection: the pod connected to the agent's loopback listener
            // itself rather than being captured, so it has no destination to go to.
            var local = (IPEndPoint)client.LocalEndPoint!;
            Refuse(client, new Flow(FlowDirection.Outbound, new IPEndPoint(Pod.AddressFor(family) ?? remote.Address, remote.Port), local) { SourceWorkload = Pod.Key },
                new ProxyError(ProxyErrorKind.Loop, SelfTarget.Reason(local, "outbound listener") + " (no captured destination)"));
            return;
        }

        var flow = new Flow(FlowDirection.Outbound, new IPEndPoint(Pod.AddressFor(family) ?? remote.Address, remote.Port), original)
        {
            SourceWorkload = Pod.Key,
        };
        var plan = RouteDecision.Decide(_services.Inventory.Current, Pod, original, _services.SelfTarget,
            _services.Identity?.TrustDomain, _services.LocalPods);
        flow.DestinationService = plan.DestinationService;
        if (plan.Destination is { } destination)
        {
            flow.Destination = destination;
            flow.DestinationWorkload = plan.Target is { } target ? FlowStrings.Workload(target.Namespace, target.Name) : null;
        }

        if (plan is DenyPlan deny)
        {
            Refuse(client, flow, deny.Error);
            return;
        }

        if (!TryReserve())
        {
            Refuse(client, flow, LimitError);
            return;
        }

        var connection = new ProxyConnection(flow);
        _services.Tracker.Add(connection);
        var relaying = false;
        try
        {
            switch (plan)
            {
                case DeliverLocalPlan<PodProxy> local:
                    RecordMutualTls(flow, local.SourceId, local.DestinationId);
                    relaying = await local.Pod.DeliverLocalAsync(connection, client, local.SourceId, local.Destination!, _plaintextEnd).ConfigureAwait(false);
                    break;
                case TunnelPlan tunnel:
                    RecordMutualTls(flow, tunnel.SourceId, tunnel.DestinationId);
                    relaying = await TunnelAsync(connection, client, tunnel).ConfigureAwait(false);
                    break;
                case PlaintextPlan:
                    relaying = await PlaintextAsync(connection, client, plan.Destination!, _plaintextEnd).ConfigureAwait(false);
                    break;
                default:
                    throw new UnreachableException($"no way to carry out {plan}");
            }
        }
        finally
        {
            // A relay finishes the connection itself when it ends (OutboundTunnelEnd, PlaintextEnd).
            if (!relaying)
            {
                client.Dispose();
                Release();
                _services.Tracker.Remove(connection);
            }
        }
    }

    private static void RecordMutualTls(Flow flow, SpiffeId sourceId, SpiffeId destinationId)
    {
        flow.SourcePrincipal = FlowStrings.Shared(sourceId.ToString());
        flow.DestinationPrincipal = FlowStrings.Shared(destinationId.ToString());
        flow.SecurityPolicy = "mutual_tls";
    }

    /// <summary>
    /// Connects to <paramref name="destination"/> and starts relaying the client to it (inbound, <paramref name="deliverFrom"/>
    /// is the client the app is shown): true when the relay took the connection over (<paramref name="end"/> finishes it),
    /// false when the destination could not be reached.
    /// </summary>
    private async Task<bool> PlaintextAsync(ProxyConnection connection, Socket client, IPEndPoint destination, IRelayEnd<SocketRelay> end,
        IPAddress? deliverFrom = null)
    {
        var upstream = await ConnectAppAsync(connection.Flow, client, destination, deliverFrom).ConfigureAwait(false);
        if (upstream is null)
        {
            return false;
        }

        StartRelay(connection, client, upstream, end);
        return true;
    }

    private static void StartRelay(ProxyConnection connection, Socket client, Socket upstream, IRelayEnd<SocketRelay> end)
    {
        try
        {
            // From here the relay runs on its own: a held connection keeps no waiting method frames.
            connection.StartRelay(client, upstream, end);
        }
        catch
        {
            upstream.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Finishes a plaintext connection once its relay has ended: what the connection's handler would do after awaiting
    /// it, and the end of the inbound connection's admission (<paramref name="admitted"/>) when it has one.
    /// </summary>
    private sealed class PlaintextEnd(PodProxy proxy, InboundLease? admitted = null) : IRelayEnd<SocketRelay>
    {
        public void RelayEnded(SocketRelay relay) => proxy.FinishPlaintext(relay, admitted);
    }

    private void FinishPlaintext(SocketRelay relay, InboundLease? admitted)
    {
        var connection = (ProxyConnection)relay.Observer;
        try
        {
            // The far side's round trip: the upstream's outbound, the client's (another node or pod) inbound.
            connection.RecordTcpRtt(connection.Flow.Direction == FlowDirection.Outbound ? relay.B : relay.A);
        }
        finally
        {
            relay.B.Dispose();
            relay.A.Dispose();
            Release();
            _services.Tracker.Remove(connection);
            admitted?.Dispose();
        }
    }

    /// <summary>
    /// Opens a stream to the destination in a pooled tunnel and starts relaying the client to it; true when the relay
    /// took the connection over (it finishes it: <see cref="OutboundTunnelEnd"/>), false when the tunnel failed.
    /// </summary>
    private async Task<bool> TunnelAsync(ProxyConnection connection, Socket client, TunnelPlan plan)
    {
        var flow = connection.Flow;
        var destination = plan.Destination!;
        flow.TraceParent = NewTraceParent();
        KeyValuePair<string, string>[] headers =
        [
            new("forwarded", $"for=\"{flow.Source}\""),
            new("traceparent", flow.TraceParent),
        ];
        HbonePool.Opened opened;
        var started = Stopwatch.GetTimestamp();
        using var first = new FirstBytes(client, _services.Tunnels!.FirstBytesBudget);
        try
        {
            using var timeout = new CancellationTokenSource(Options.ConnectTimeout * 2);
            opened = await _services.Tunnels.OpenStreamAsync(Pod, plan.SourceId, plan.DestinationId, plan.Address,
                plan.Authority, headers, timeout.Token, first).ConfigureAwait(false);
        }
        catch (SocketException) when (first.ClientFailed)
        {
            // The client reset its connection before its stream opened: there is nothing to carry.
            return false;
        }
        catch (Exception e) when (ProxyError.OfTunnelFailure(e, destination) is { } error)
        {
            flow.Record(error);
            RelayPumps.Reset(client);
            return false;
        }

        if (first.ClientFailed)
        {
            // The client reset its connection while its stream opened.
            opened.Stream.Reset();
            await opened.Stream.DisposeAsync().ConfigureAwait(false);
            return false;
        }

        // The first bytes went with the request: they count as the client's, like every byte the relay moves after them.
        var carried = first.Length;
        if (carried > 0)
        {
            connection.OnBytes(fromA: true, carried);
            _services.Tunnels.FirstBytesBudget.StreamCarried();
        }
        flow.ConnectTime = Stopwatch.GetElapsedTime(started);
        flow.TlsHandshakeTime = opened.Handshake;
        try
        {
            // From here the relay runs on its own: a held connection keeps no waiting method frames.
            connection.StartRelay(client, opened.Stream, socketIsClient: true, _outboundTunnelEnd);
            return true;
        }
        catch
        {
            await opened.Stream.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Finishes an outbound tunnelled connection once its relay has ended: what the connection's handler would do after awaiting it.</summary>
    private sealed class OutboundTunnelEnd(PodProxy proxy) : IRelayEnd<StreamRelay>
    {
        public void RelayEnded(StreamRelay relay) => _ = proxy.FinishOutboundTunnelAsync(relay);
    }

    private async Task FinishOutboundTunnelAsync(StreamRelay relay)
    {
        var connection = (ProxyConnection)relay.Observer;
        try
        {
            connection.RecordTcpRtt(relay.Socket);
            if (relay.Stream.ConnectionLoss is { } lost)
            {
                connection.Flow.Record(new ProxyError(ProxyErrorKind.UpstreamTermination, $"tunnel to {connection.Flow.Destination?.Address} lost: {lost.Message}"));
            }

            await relay.Stream.DisposeAsync().ConfigureAwait(false);
        }
        finally
        {
            relay.Socket.Dispose();
            Release();
            _services.Tracker.Remove(connection);
        }
    }

    /// <summary>
    /// The in-process short cut: a meshed pod on this node reaches another one without a tunnel, but its
    /// destination still authorizes it as if it had come through one, and records its own inbound flow. True when
    /// the relay took the connection over: the source's <paramref name="end"/> finishes it, then this side's part
    /// (<see cref="LocalDeliveryEnd"/>).
    /// </summary>
    private async Task<bool> DeliverLocalAsync(ProxyConnection connection, Socket client, SpiffeId sourceId, IPEndPoint destination,
        IRelayEnd<SocketRelay> end)
    {
        var outbound = connection.Flow;
        var inbound = new Flow(FlowDirection.Inbound, outbound.Source, destination)
        {
            SourceWorkload = outbound.SourceWorkload,
            SourcePrincipal = outbound.SourcePrincipal,
            DestinationWorkload = Pod.Key,
            DestinationPrincipal = outbound.DestinationPrincipal,
            SecurityPolicy = "mutual_tls",
            Destination = destination,
        };
        _services.Tracker.Flows.Opened(inbound);
        var relaying = false;
        try
        {
            if (InboundDecision.Authorize(_services.Inventory.Current, Pod, ConnectionAttributes.Mtls(sourceId.ToString(), outbound.Source.Address, destination.Port)) is { } denied)
            {
                inbound.Record(denied);
                outbound.Record(denied);
                RelayPumps.Reset(client);
                return false;
            }

            if (!TryReserve())
            {
                inbound.Record(LimitError);
                outbound.Record(LimitError);
                RelayPumps.Reset(client);
                return false;
            }

            try
            {
                var upstream = await ConnectAppAsync(outbound, client, destination, deliverFrom: outbound.Source.Address).ConfigureAwait(false);
                if (upstream is null)
                {
                    (inbound.ResponseFlags, inbound.Error) = (outbound.ResponseFlags, outbound.Error);
                    return false;
                }

                connection.Mirror = inbound;
                StartRelay(connection, client, upstream, new LocalDeliveryEnd(this, inbound, end));
                relaying = true;
                return true;
            }
            finally
            {
                if (!relaying)
                {
                    Release();
                }
            }
        }
        finally
        {
            if (!relaying)
            {
                _services.Tracker.Flows.Closed(inbound);
            }
        }
    }

    /// <summary>
    /// Ends an in-process short cut: the source's part (<paramref name="then"/>: the round trip recorded on both flow
    /// records, the sockets closed), then the destination's (its reservation and inbound record).
    /// </summary>
    private sealed class LocalDeliveryEnd(PodProxy destination, Flow inbound, IRelayEnd<SocketRelay> then) : IRelayEnd<SocketRelay>
    {
        public void RelayEnded(SocketRelay relay)
        {
            try
            {
                then.RelayEnded(relay);
            }
            finally
            {
                destination.Release();
                destination._services.Tracker.Flows.Closed(inbound);
            }
        }
    }

    /// <summary>
    /// Connects to <paramref name="destination"/> from inside this pod, delivering from <paramref name="deliverFrom"/>'s
    /// address when given (the app in this pod is the destination); on failure resets the client and returns null.
    /// </summary>
    private async Task<Socket?> ConnectAppAsync(Flow flow, Socket client, IPEndPoint destination, IPAddress? deliverFrom = null)
    {
        var started = Stopwatch.GetTimestamp();
        try
        {
            var upstream = await (deliverFrom is null
                ? _services.Sockets.ConnectAsync(Pod, destination, Options)
                : _services.Sockets.DeliverAsync(Pod, deliverFrom, destination, Options)).ConfigureAwait(false);
            flow.ConnectTime = Stopwatch.GetElapsedTime(started);
            return upstream;
        }
        catch (SocketException e)
        {
            // The client already has a connection, so it learns of the failure as a reset.
            flow.Record(ProxyError.OfConnectFailure(e, destination));
            RelayPumps.Reset(client);
            return null;
        }
    }

    private void Refuse(Socket client, Flow flow, ProxyError error)
    {
        flow.Record(error);
        RelayPumps.Reset(client);
        _services.Tracker.Flows.Opened(flow);
        _services.Tracker.Flows.Closed(flow);
    }

    private static string NewTraceParent()
    {
        Span<byte> ids = stackalloc byte[24];
        RandomNumberGenerator.Fill(ids);
        return $"00-{Convert.ToHexStringLower(ids[..16])}-{Convert.ToHexStringLower(ids[16..])}-01";
    }
}
