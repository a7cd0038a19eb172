using System.Net;
using System.Net.Sockets;
using Weft.Hbone;
using Weft.Identity;
using Weft.Inventory;
using Weft.Proxy;

namespace Weft.Gateway;

/// <summary>How the gateway joins the mesh: who it is and how many tunnels it may hold.</summary>
/// <param name="Identity">Where its certificate comes from (CA files or the CA service), as for an agent.</param>
/// <param name="Namespace">The namespace of the gateway's SPIFFE ID (spiffe://TD/ns/NS/sa/SA).</param>
/// <param name="ServiceAccount">The service account of the gateway's SPIFFE ID.</param>
internal sealed record GatewayMeshOptions(IdentityOptions Identity, string Namespace, string ServiceAccount)
{
    /// <summary>Tunnel limits: <see cref="ProxyOptions.MaxTunnelsPerPod"/> bounds the gateway's tunnels, one per meshed backend pod (more past 100 streams).</summary>
    public ProxyOptions Tunnels { get; init; } = new() { MaxTunnelsPerPod = 1024 };
}

/// <summary>How the gateway reaches one endpoint: plaintext, or an HBONE stream to the pod's identity.</summary>
/// <param name="Destination">The backend pod's SPIFFE ID when it is meshed; null for plaintext.</param>
internal readonly record struct UpstreamPlan(SpiffeId? Destination)
{
    public bool IsTunnel => Destination is not null;
}

/// <summary>The backend's agent refused the gateway's CONNECT (an AuthorizationPolicy, STRICT mode, a limit): <see cref="StatusCode"/> is its answer.</summary>
internal sealed class MeshRefusedException(string message, int statusCode) : Exception(message)
{
    public int StatusCode { get; } = statusCode;
}

/// <summary>
/// The gateway as a member of the mesh. It holds its own SVID (spiffe://TD/ns/NS/sa/SA, from CA files or the CA
/// service through <see cref="IdentityManager"/>, renewed at half life) and is the connect step of the gateway's
/// HTTP client: each new connection to an endpoint asks the inventory whether the endpoint is a meshed pod.
/// <code>
///   endpoint a meshed, non-host-network pod ─► HBONE CONNECT ip:port over mTLS to ip:15008 (the agent's HbonePool,
///                                              the pod's identity verified) ─► the HTTP connection rides that stream
///   anything else                            ─► a plain TCP connection, as without the mesh
/// </code>
/// The pool keys every tunnel on the gateway as one source, so <see cref="ProxyOptions.MaxTunnelsPerPod"/> bounds them all.
/// The gateway's own namespace must not be enrolled: it makes its own tunnels, and an agent must not capture them.
/// </summary>
internal sealed class GatewayMesh : IDisposable
{
    private readonly IdentityManager _identity;
    private readonly HbonePool _tunnels;
    private readonly Func<InventorySnapshot> _inventory;
    private readonly LocalPod _self;
    private readonly TimeSpan _connectTimeout;

    private GatewayMesh(IdentityManager identity, HbonePool tunnels, Func<InventorySnapshot> inventory, LocalPod self, SpiffeId id, TimeSpan connectTimeout)
    {
        _identity = identity;
        _tunnels = tunnels;
        _inventory = inventory;
        _self = self;
        _connectTimeout = connectTimeout;
        Id = id;
    }

    /// <summary>The gateway's SPIFFE ID: what backends' AuthorizationPolicies name.</summary>
    public SpiffeId Id { get; }

    public string TrustDomain => _identity.TrustDomain;

    /// <summary>The gateway's certificate as a new tunnel would present it now (renewed first when past half life).</summary>
    public ValueTask<Svid> CertificateAsync(CancellationToken cancellationToken = default) => _identity.GetAsync(Id, cancellationToken);

    /// <summary>HBONE tunnels open now.</summary>
    public int OpenTunnels => _tunnels.OpenTunnels;

    /// <summary>Idle tunnels closed to make room for a new one at the limit.</summary>
    public long TunnelsEvicted => _tunnels.Evicted;

    /// <summary>Connections refused because the gateway held its limit of tunnels and none was idle.</summary>
    public long TunnelsRefused => _tunnels.Refused;

    /// <summary>Loads the identity (throws <see cref="IdentityException"/> when its files are unusable) and waits for the first certificate, at most its issuance wait.</summary>
    public static async Task<GatewayMesh> StartAsync(GatewayMeshOptions options, Func<InventorySnapshot> inventory, CancellationToken cancellationToken = default)
    {
        SpiffeId id;
        try
        {
            id = new SpiffeId(options.Identity.TrustDomain, options.Namespace, options.ServiceAccount);
        }
        catch (ArgumentException e)
        {
            options.Identity.CaService?.Dispose();
            throw new IdentityException($"the gateway's identity in trust domain '{options.Identity.TrustDomain}', namespace '{options.Namespace}', service account '{options.ServiceAccount}' is not a valid SPIFFE ID: {e.Message}");
        }

        var identity = IdentityManager.Start(options.Identity);
        identity.SetAllowed([id]);
        var self = new LocalPod(options.Namespace, "weft-gateway", options.ServiceAccount, NetnsPath: "", NetnsCookie: 0, Ipv4: null, Ipv6: null, FailOpen: false);
        var mesh = new GatewayMesh(identity, new HbonePool(identity, options.Tunnels, GatewaySockets.Instance), inventory, self, id, options.Tunnels.ConnectTimeout);
        try
        {
            var svid = await identity.GetAsync(id, cancellationToken).ConfigureAwait(false);
            Log.Info("gateway", $"mesh identity {svid}; meshed backends are reached over HBONE, the others in plaintext");
        }
        catch (IdentityException e)
        {
            // Not fatal: the first certificate may come later (the CA service retries); until then meshed backends get 503.
            Log.Warn("gateway", $"no certificate for {id} yet ({e.Message}); meshed backends answer 503 until one is issued");
        }

        return mesh;
    }

    /// <summary>
    /// Plaintext or tunnel for <paramref name="address"/>, from the inventory alone: the same rule as the agent's
    /// outbound (a meshed pod that is not on the host network rides HBONE to its service account's identity).
    /// </summary>
    public static UpstreamPlan Decide(InventorySnapshot snapshot, IPAddress address, string trustDomain) =>
        snapshot.TryGetWorkload(address, out var workload) && workload is { Enrolled: true, HostNetwork: false }
            ? new UpstreamPlan(new SpiffeId(trustDomain, workload.Namespace, workload.ServiceAccount))
            : new UpstreamPlan(null);

    /// <summary>
    /// The HTTP client's connect step: a plain socket or an HBONE stream to <paramref name="context"/>'s endpoint.
    /// A CONNECT the backend's agent refuses throws <see cref="MeshRefusedException"/>; a pool at its limit,
    /// <see cref="TunnelPoolFullException"/>; a failed dial or TLS (wrong identity included), a connect failure.
    /// </summary>
    public async ValueTask<Stream> ConnectAsync(SocketsHttpConnectionContext context, CancellationToken cancellationToken)
    {
        var endpoint = context.DnsEndPoint;

        // Endpoints come from EndpointSlices as addresses; a name (never a pod) is dialled in plaintext.
        var address = IPAddress.TryParse(endpoint.Host, out var parsed) ? parsed : null;
        var plan = address is null ? new UpstreamPlan(null) : Decide(_inventory(), address, TrustDomain);
        if (plan.Destination is not { } destination || address is null)
        {
            EndPoint plain = address is null ? endpoint : new IPEndPoint(address, endpoint.Port);
            return new NetworkStream(await GatewaySockets.ConnectAsync(plain, _connectTimeout, cancellationToken).ConfigureAwait(false), ownsSocket: true);
        }

        var authority = new IPEndPoint(address, endpoint.Port).ToString();
        var traceParent = context.InitialRequestMessage.Headers.TryGetValues("traceparent", out var values) ? values.FirstOrDefault() : null;
        KeyValuePair<string, string>[] headers = traceParent is null ? [] : [new("traceparent", traceParent)];
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(_connectTimeout * 2);
            var opened = await _tunnels.OpenStreamAsync(_self, Id, destination, address, authority, headers, timeout.Token).ConfigureAwait(false);
            return new TunnelStream(opened.Stream);
        }
        catch (HboneException e) when (e.StatusCode is { } status)
        {
            throw new MeshRefusedException($"{destination} at {authority} refused the gateway's CONNECT with {status}", status);
        }
        catch (IdentityException e)
        {
            throw new TunnelException($"no certificate for the gateway: {e.Message}", isTls: true);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new TimeoutException($"no HBONE stream to {authority} within {(_connectTimeout * 2).TotalSeconds:0.#}s");
        }
    }

    public void Dispose()
    {
        // Tunnels close now, or (still carrying a stream) once their stream ends.
        _tunnels.Release(_self);
        _tunnels.Dispose();
        _identity.Dispose();
    }

    /// <summary>The gateway's sockets: plain ones in its own network namespace (it runs as a pod; nothing captures it).</summary>
    private sealed class GatewaySockets : IPodSockets
    {
        public static GatewaySockets Instance { get; } = new();

        public static async Task<Socket> ConnectAsync(EndPoint destination, TimeSpan connectTimeout, CancellationToken cancellationToken)
        {
            var socket = destination is IPEndPoint ip
                ? new Socket(ip.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true }
                : new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            try
            {
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                timeout.CancelAfter(connectTimeout);
                try
                {
                    await socket.ConnectAsync(destination, timeout.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
                {
                    throw new SocketException((int)SocketError.TimedOut);
                }

                return socket;
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        }

        public Task<Socket> ConnectAsync(LocalPod pod, IPEndPoint destination, ProxyOptions options, CancellationToken cancellationToken = default) =>
            ConnectAsync(destination, options.ConnectTimeout, cancellationToken);

        public void Prepare(LocalPod pod) => throw new NotSupportedException("the gateway has no in-pod listeners");

        public Socket Listen(LocalPod pod, IPEndPoint endpoint, bool dualMode, int backlog) => throw new NotSupportedException("the gateway has no in-pod listeners");

        public Task<Socket> DeliverAsync(LocalPod pod, IPAddress client, IPEndPoint destination, ProxyOptions options, CancellationToken cancellationToken = default) =>
            throw new NotSupportedException("the gateway delivers nothing inbound");

        public void Release(LocalPod pod)
        {
        }
    }

    /// <summary>
    /// An HBONE CONNECT stream as the byte stream an HTTP connection is written on; disposing it ends the stream
    /// (END_STREAM after what was written, a reset when the peer is still sending).
    /// </summary>
    private sealed class TunnelStream(HboneStream tunnel) : Stream
    {
        private readonly Stream _input = tunnel.Input.AsStream(leaveOpen: true);
        private readonly Stream _output = tunnel.Output.AsStream(leaveOpen: true);
        private int _disposed;

        public override bool CanRead => true;

        public override bool CanWrite => true;

        public override bool CanSeek => false;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count) => _input.Read(buffer, offset, count);

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => _input.ReadAsync(buffer, cancellationToken);

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => _input.ReadAsync(buffer, offset, count, cancellationToken);

        public override void Write(byte[] buffer, int offset, int count) => _output.Write(buffer, offset, count);

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) => _output.WriteAsync(buffer, cancellationToken);

        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => _output.WriteAsync(buffer, offset, count, cancellationToken);

        public override void Flush() => _output.Flush();

        public override Task FlushAsync(CancellationToken cancellationToken) => _output.FlushAsync(cancellationToken);

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override async ValueTask DisposeAsync()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0)
            {
                await tunnel.DisposeAsync().ConfigureAwait(false);
            }

            await base.DisposeAsync().ConfigureAwait(false);
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing && Interlocked.Exchange(ref _disposed, 1) == 0)
            {
                // SocketsHttpHandler disposes synchronously; ending the stream must not wait on the peer's window here.
                _ = tunnel.DisposeAsync().AsTask();
            }

            base.Dispose(disposing);
        }
    }
}
