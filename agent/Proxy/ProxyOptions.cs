using Weft.Hbone;

namespace Weft.Proxy;

/// <summary>Limits and timeouts of the node proxy; defaults suit a production node.</summary>
internal sealed record ProxyOptions
{
    public ushort OutboundPort { get; init; } = 15001;

    public ushort InboundPort { get; init; } = 15006;

    /// <summary>
    /// The agent's ports in the node's own namespace (admin API, metrics, health). With the in-pod
    /// ports they are never a destination the agent connects to (<see cref="SelfTarget"/>).
    /// </summary>
    public IReadOnlyList<(int Port, string What)> HostPorts { get; init; } =
        [(15000, "admin API"), (15020, "metrics endpoint"), (15021, "health endpoint")];

    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>A connection with no byte either way for this long is reset.</summary>
    public TimeSpan IdleTimeout { get; init; } = TimeSpan.FromHours(1);

    /// <summary>
    /// An HBONE tunnel that carried no stream for this long closes (its keepalive PINGs would otherwise
    /// hold it, and its descriptors on both nodes, for ever).
    /// </summary>
    public TimeSpan TunnelIdleTimeout { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>
    /// Outbound HBONE tunnels one pod may hold (one per remote pod it talks to, more past 100 streams):
    /// at the limit the pod's least recently used idle tunnel closes; with none idle the connection is refused (UO).
    /// </summary>
    public int MaxTunnelsPerPod { get; init; } = 256;

    /// <summary>
    /// New outbound connections that may hold their first bytes at once while their tunnel streams open, so that the
    /// bytes go with the request (<see cref="FirstBytes"/>); past it a connection's bytes wait for the stream's answer.
    /// </summary>
    public int MaxFirstBytesHeld { get; init; } = FirstBytesBudget.DefaultMax;

    /// <summary>Open connections per pod, inbound and outbound together (a handshake in progress counts); more are refused.</summary>
    public int MaxConnectionsPerPod { get; init; } = 65_536;

    /// <summary>Inbound limits (per peer identity, per source address, per node); null derives them from the descriptor limit at start.</summary>
    public InboundLimits? Inbound { get; init; }

    public int ListenBacklog { get; init; } = 4096;

    /// <summary>
    /// How often each HBONE tunnel PINGs its peer, and how long it waits for the ACK: a peer that vanished
    /// without a FIN (a dead node, a cut path) is found within the sum, and its streams end (docs/faults.md).
    /// </summary>
    public TimeSpan TunnelKeepalive { get; init; } = new HboneSettings().KeepaliveInterval;

    /// <inheritdoc cref="TunnelKeepalive"/>
    public TimeSpan TunnelKeepaliveTimeout { get; init; } = new HboneSettings().KeepaliveTimeout;

    /// <summary>The HTTP/2 settings of every tunnel, as server and as client.</summary>
    public HboneSettings Tunnel() => new() { KeepaliveInterval = TunnelKeepalive, KeepaliveTimeout = TunnelKeepaliveTimeout };
}
