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

    /// <summary>Open connections per pod, inbound and outbound together (a handshake in progress counts); more are refused.</summary>
    public int MaxConnectionsPerPod { get; init; } = 65_536;

    /// <summary>Inbound limits (per peer identity, per source address, per node); null derives them from the descriptor limit at start.</summary>
    public InboundLimits? Inbound { get; init; }

    public int ListenBacklog { get; init; } = 4096;
}
